"""Low-rank factorization: replace one layer by two thinner ones whose product approximates it.

A Linear layer's weight W (out x in) is factored with the SVD, W ~ (U_r S_r)(V_r^T): a Linear
in -> r followed by a Linear r -> out. That costs r * (in + out) parameters instead of in * out,
so it only saves anything below the break-even rank in * out / (in + out).

Convolutions use channel SVD (Zhang et al., 2015): the k x k kernel of a C_in -> C_out conv,
reshaped to a C_out x (C_in k k) matrix, is factored the same way into a k x k conv C_in -> r (with
the original stride and padding) and a 1x1 conv r -> C_out. We chose it over spatial SVD (k x 1
then 1 x k) and Tucker-2 (1x1, k x k, 1x1) because it needs nothing beyond ``torch.linalg.svd``,
is exact at full rank, gives two ordinary convolutions that every runtime (ONNX Runtime, the Pi)
runs fast, and its rank is read off one list of singular values.

The rank of each layer comes from an energy threshold: the smallest r whose singular values keep
that fraction of the sum of squares (the squared Frobenius norm). Layers where that r would not
save parameters stay as they are.
"""
from __future__ import annotations

import copy
import numbers

import torch
import torch.nn as nn
from torch.nn.utils import skip_init

__all__ = ["FACTORABLE", "check_energy", "check_rank", "matrix", "full_rank", "break_even_rank",
           "factored_params", "svd", "energy_rank", "Factored", "factor", "factorable_layers",
           "decompose", "plan", "swap_layer", "factorize", "ranks_of", "EnergySweep"]

FACTORABLE = (nn.Conv2d, nn.Linear)


def check_energy(energy: float) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
        raise ValueError(f"energy is the fraction of each layer's squared singular values to "
                         f"keep and must be in (0, 1] (e.g. 0.9), got {energy!r}")
    return float(energy)


def check_rank(rank: int, full: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank <= full:
        raise ValueError(f"rank must be an integer from 1 to this layer's full rank {full}, "
                         f"got {rank!r}")
    return int(rank)


def matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as the matrix that is factored: out x in (Linear), C_out x C_in*k*k (conv)."""
    if not isinstance(layer, FACTORABLE):
        raise TypeError(f"can factor nn.Linear and ungrouped nn.Conv2d, not {layer}")
    if getattr(layer, "groups", 1) != 1:
        kind = "a depthwise" if layer.groups == layer.in_channels else "a grouped"
        raise ValueError(f"cannot factor {layer}: {kind} convolution (groups={layer.groups}) "
                         "mixes no channels across its groups, so channel SVD does not apply; "
                         "factor nn.Linear and ungrouped nn.Conv2d layers")
    return layer.weight.detach().flatten(1)


def full_rank(layer: nn.Module) -> int:
    return min(matrix(layer).shape)


def break_even_rank(layer: nn.Module) -> float:
    """Above this rank the two factors hold more parameters than the layer itself."""
    out_f, in_f = matrix(layer).shape
    return out_f * in_f / (out_f + in_f)


def factored_params(layer: nn.Module, rank: int) -> int:
    out_f, in_f = matrix(layer).shape
    bias = layer.bias.numel() if layer.bias is not None else 0
    return rank * (in_f + out_f) + bias


def svd(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of the layer's matrix (thin: ``min(out, in)`` singular values, largest first).

    Taken from the eigendecomposition of the small Gram matrix A A^T (A the short side up), in
    float64: on the teacher's wide C_out x 9 C_in matrices that was 2.5-3.5x faster than
    ``torch.linalg.svd`` on 2 cores (far more on a busy machine) and agrees with it to ~1e-15
    relative. Directions of (numerically) zero singular values get zero rows in Vh: they
    contribute nothing anyway."""
    w = matrix(layer).double()
    tall = w.shape[0] > w.shape[1]
    a = w.T if tall else w
    evals, evecs = torch.linalg.eigh(a @ a.T)
    s = evals.flip(0).clamp_min(0).sqrt()
    u = evecs.flip(1)
    nonzero = s > s[0] * 1e-12
    vh = torch.where(nonzero[:, None], u.T @ a / torch.where(nonzero, s, 1.0)[:, None], 0.0)
    if tall:  # a = W^T = u s vh, so W = vh^T s u^T
        u, vh = vh.T, u.T
    return u.float(), s.float(), vh.float()


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank keeping ``energy`` of the sum of squared singular values."""
    energy = check_energy(energy)
    kept = (singular_values.double() ** 2).cumsum(0) / (singular_values.double() ** 2).sum()
    return min(int((kept < energy - 1e-12).sum().item()) + 1, len(singular_values))


class Factored(nn.Sequential):
    """The two layers that replace one: ``[0]`` maps to the rank, ``[1]`` back out."""

    @property
    def rank(self) -> int:
        first = self[0]
        return first.out_features if isinstance(first, nn.Linear) else first.out_channels


def factor(layer: nn.Module, rank: int, usv=None, init: bool = True) -> Factored:
    """Two layers whose product is the best rank-``rank`` approximation of ``layer``
    (``init=False``: the right shapes only, for loading a checkpoint into)."""
    rank = check_rank(rank, full_rank(layer))
    if init:
        u, s, vh = usv if usv is not None else svd(layer)
        root = s[:rank].sqrt()  # S split evenly between the factors: balanced for fine-tuning
        first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root
    bias = layer.bias is not None
    # the weights are about to be overwritten: skip the random init (a third of a slider move)
    make = skip_init if init else (lambda cls, *a, **kw: cls(*a, **kw))
    if isinstance(layer, nn.Linear):
        first = make(nn.Linear, layer.in_features, rank, bias=False)
        second = make(nn.Linear, rank, layer.out_features, bias=bias)
        if init:
            first.weight.data.copy_(first_w)
            second.weight.data.copy_(second_w)
    else:
        first = make(nn.Conv2d, layer.in_channels, rank, layer.kernel_size, layer.stride,
                     layer.padding, layer.dilation, bias=False, padding_mode=layer.padding_mode)
        second = make(nn.Conv2d, rank, layer.out_channels, 1, bias=bias)
        if init:
            first.weight.data.copy_(first_w.reshape(first.weight.shape))
            second.weight.data.copy_(second_w[:, :, None, None])
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    return Factored(first, second).to(layer.weight.device)


def factorable_layers(model: nn.Module, kinds=(nn.Conv2d,), min_kernel: int = 3) -> dict:
    """The layers a plan may factor: by default ungrouped k x k convolutions with k >= 3 (a 1x1
    conv or the 10-way classifier saves little), skipping the 1-channel stem."""
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, kinds) or getattr(m, "groups", 1) != 1:
            continue
        if isinstance(m, nn.Conv2d) and (min(m.kernel_size) < min_kernel or m.in_channels == 1):
            continue
        out[name] = m
    return out


def decompose(model: nn.Module, layers: dict | None = None) -> dict:
    """SVDs of every factorable layer, computed once so a rank slider only slices them."""
    layers = factorable_layers(model) if layers is None else layers
    return {name: svd(m) for name, m in layers.items()}


def plan(model: nn.Module, energy: float, svds: dict | None = None) -> dict[str, int]:
    """Per-layer ranks for an energy threshold; layers where factoring would not save
    parameters are left out of the plan."""
    check_energy(energy)
    svds = decompose(model) if svds is None else svds
    layers = dict(model.named_modules())
    ranks = {}
    for name, (_, s, _) in svds.items():
        r = energy_rank(s, energy)
        if r < break_even_rank(layers[name]):
            ranks[name] = r
    return ranks


def swap_layer(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put ``layer`` where ``model``'s submodule ``name`` ("layer1.0.conv1") is, in place."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, layer)


def factorize(model: nn.Module, ranks: dict[str, int] | None = None, energy: float | None = None,
              svds: dict | None = None, init: bool = True, kinds=(nn.Conv2d,),
              factor_fn=None) -> nn.Module:
    """A copy of ``model`` with the layers in ``ranks`` (or chosen by ``energy`` among the
    factorable layers of ``kinds``: add ``nn.Linear`` for fully connected layers) factored.
    ``factor_fn(layer, rank)`` replaces ``factor`` (04's exercise plugs the learner's in)."""
    if (ranks is None) == (energy is None):
        raise ValueError("give either ranks={layer: rank} or energy=<fraction in (0, 1]>")
    if ranks is None:
        if svds is None:
            svds = decompose(model, factorable_layers(model, kinds))
        ranks = plan(model, energy, svds)
        if not ranks:
            raise ValueError(
                f"no layer of {type(model).__name__} can be factored at energy {energy} with "
                f"fewer parameters ({len(svds)} {'/'.join(k.__name__ for k in kinds)} layers "
                "considered); lower the energy, or pass kinds=(nn.Conv2d, nn.Linear)")
    layers = dict(model.named_modules())
    for name in ranks:
        if name not in layers:
            raise KeyError(f"no layer {name!r} in the model")
        try:
            matrix(layers[name])
        except (TypeError, ValueError) as e:
            raise type(e)(f"layer {name!r}: {e}") from None
    # the layers being replaced are shared, not copied: they would be thrown away at once
    out = copy.deepcopy(model, memo={id(layers[name]): layers[name] for name in ranks})
    for name, rank in ranks.items():
        usv = svds.get(name) if svds else None
        swap_layer(out, name, factor(layers[name], rank, usv, init) if factor_fn is None
                   else factor_fn(layers[name], rank))
    return out


def ranks_of(model: nn.Module) -> dict[str, int]:
    """The ranks of a factorized model's layers (to rebuild its shape from a checkpoint card)."""
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, Factored)}


class EnergySweep:
    """``model`` factored at one energy after another; ``at(energy)`` gives the numbers 04's
    slider shows: ranks, parameters, MACs, accuracy on ``images``, batch-1 latency.

    The SVDs are taken once (or pass ``svds``), so an energy only slices them into factors
    swapped into one working copy (it shares the original layers with ``model``, which is only
    read); each energy's numbers are kept. ``original`` holds the unfactored model's."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 svds: dict | None = None, latency_runs: int = 10):
        from . import counts, evaluation

        self.base, self.images, self.labels = model.cpu().eval(), images, labels
        self.latency_runs = latency_runs
        self.svds = decompose(self.base) if svds is None else svds
        self.layers = {name: self.base.get_submodule(name) for name in self.svds}
        self.work = copy.deepcopy(self.base, memo={id(m): m for m in self.layers.values()}).eval()
        self.original = {"params": counts.count_params(self.base),
                         "macs": counts.count_macs(self.base),
                         "accuracy": evaluation.accuracy_on(self.base, images, labels)}
        self.seen: dict[float, dict] = {}

    def model(self, ranks: dict[str, int]) -> nn.Module:
        """The working copy with the layers in ``ranks`` factored, the others whole (rewritten
        by the next call)."""
        for name, layer in self.layers.items():
            swap_layer(self.work, name, factor(layer, ranks[name], self.svds[name])
                       if name in ranks else layer)
        return self.work

    def at(self, energy: float) -> dict:
        from . import counts, evaluation, latency

        energy = round(energy, 4)
        if energy not in self.seen:
            ranks = plan(self.base, energy, self.svds)
            m = self.model(ranks)
            self.seen[energy] = {
                "ranks": ranks, "factored": len(ranks), "layers": len(self.svds),
                "params": counts.count_params(m), "macs": counts.count_macs(m),
                "accuracy": evaluation.accuracy_on(m, self.images, self.labels),
                "latency_b1_ms": latency.quick_latency(m, self.latency_runs),
                "images": len(self.labels)}
        return self.seen[energy]
