"""Pruning: magnitude masks, a per-layer sensitivity scan, and structured channel pruning.

Unstructured pruning zeroes single weights and keeps them zero with ``torch.nn.utils.prune``
masks; the tensors stay dense, so neither the file nor dense inference shrinks. Structured
pruning removes whole channels with torch-pruning's dependency graph, so every coupled layer
(the residual adds, the batch norms, the next convolution's inputs) shrinks with them.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

__all__ = ["PRUNABLE", "check_rate", "prunable_layers", "clone", "magnitude_threshold",
           "magnitude_mask", "unstructured", "remove_masks", "csr_bytes", "prune_pair", "sparsity",
           "sensitivity_scan", "sensitivity_plan", "IMPORTANCES", "structured", "RateSweep"]

PRUNABLE = (nn.Conv2d, nn.Linear)


def check_rate(rate: float) -> float:
    if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"prune rate must be in [0, 1) (0 keeps every weight, 0.9 removes "
                         f"90 %), got {rate!r}")
    return float(rate)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear by name; an error if the model has none."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to prune; "
                         "pruning works on the weights of those layers")
    return layers


def clone(model: nn.Module) -> nn.Module:
    """A deep copy that also works on a masked model (its masked ``weight`` is a computed
    tensor, which ``copy.deepcopy`` refuses)."""
    masked = [m for m in model.modules() if hasattr(m, "weight_orig") and hasattr(m, "weight_mask")]
    saved = [m.weight for m in masked]
    try:
        for m in masked:
            m.weight = m.weight.detach()
        return copy.deepcopy(model)
    finally:
        for m, w in zip(masked, saved):
            m.weight = w


# -- the mechanics the exercise teaches ------------------------------------------------------

def magnitude_threshold(weight: torch.Tensor, rate: float) -> float:
    """The largest magnitude that is pruned: the k-th smallest |w|, k = round(rate * n).

    Rate 0 prunes nothing and returns 0.0."""
    rate = check_rate(rate)
    k = round(rate * weight.numel())
    if k == 0:
        return 0.0
    return weight.detach().abs().flatten().kthvalue(k).values.item()


def magnitude_mask(weight: torch.Tensor, rate: float) -> torch.Tensor:
    """A bool mask that keeps the ``n - round(rate * n)`` largest-magnitude weights.

    Counting, not comparing with the threshold, keeps the rate exact when magnitudes tie."""
    rate = check_rate(rate)
    n = weight.numel()
    keep = n - round(rate * n)
    mask = torch.zeros(n, dtype=torch.bool)
    if keep:
        mask[weight.detach().abs().flatten().topk(keep).indices] = True
    return mask.view_as(weight)


# -- unstructured pruning of a whole model ---------------------------------------------------

def unstructured(model: nn.Module, rate: float | dict[str, float], scope: str = "global",
                 inplace: bool = False, mask_fn=magnitude_mask) -> nn.Module:
    """Zero the smallest weights and attach masks (``torch.nn.utils.prune``) that keep them zero.

    ``scope="global"`` ranks all weights of all layers together (one threshold), ``"layer"``
    prunes every layer at ``rate``; a dict ``{layer name: rate}`` is a per-layer plan."""
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    model = model if inplace else clone(model)
    layers = prunable_layers(model)
    if isinstance(rate, dict):
        unknown = set(rate) - set(layers)
        if unknown:
            raise ValueError(f"no prunable layer named {sorted(unknown)}; known: {list(layers)}")
        plan = {name: check_rate(r) for name, r in rate.items()}
    elif scope == "layer":
        plan = {name: check_rate(rate) for name in layers}
    else:
        check_rate(rate)
        flat = torch.cat([m.weight.detach().flatten() for m in layers.values()])
        keep = mask_fn(flat, rate)
        start = 0
        for name, m in layers.items():
            n = m.weight.numel()
            tprune.custom_from_mask(m, "weight", keep[start:start + n].view_as(m.weight))
            start += n
        return model
    for name, r in plan.items():
        m = layers[name]
        tprune.custom_from_mask(m, "weight", mask_fn(m.weight, r))
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Make the zeros permanent and drop the masks: the model becomes a plain dense model."""
    for m in model.modules():
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
    return model


def csr_bytes(weight: torch.Tensor, index_bytes: int = 8, value_bytes: int = 4) -> int:
    """Bytes of ``weight`` as a CSR matrix (rows = output channels, columns = everything else):
    the non-zero values, one column index per value, and rows + 1 row pointers. torch stores the
    indices as int64 (8 bytes); int32 (4) halves them."""
    w = weight.reshape(weight.shape[0], -1)
    nnz = int((w != 0).sum())
    return nnz * (value_bytes + index_bytes) + (w.shape[0] + 1) * index_bytes


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all Conv2d / Linear weights."""
    weights = [m.weight for m in prunable_layers(model).values()]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total


# -- sensitivity ------------------------------------------------------------------------------

@torch.no_grad()
def sensitivity_scan(model: nn.Module, rates, images: torch.Tensor, labels: torch.Tensor,
                     layers=None, progress: bool = True) -> dict[str, list[float]]:
    """Accuracy on (images, labels) when one layer at a time is pruned at each rate."""
    from tqdm.auto import tqdm

    rates = [check_rate(r) for r in rates]
    model = model.eval()
    all_layers = prunable_layers(model)
    names = list(layers or all_layers)
    out = {}
    for name in tqdm(names, desc="sensitivity", disable=not progress):
        w = all_layers[name].weight
        original = w.detach().clone()
        # sort once; each rate then zeroes exactly its k = round(rate * n) smallest magnitudes,
        # counted as the exercise teaches (a threshold comparison would miscount ties)
        order = original.abs().flatten().argsort(stable=True)
        accs = []
        for r in rates:
            k = round(r * order.numel())
            if k:
                w.view(-1)[order[:k]] = 0
            accs.append((model(images).argmax(1) == labels).float().mean().item())
            w.copy_(original)
        out[name] = accs
    return out


def sensitivity_plan(scan: dict[str, list[float]], rates, sizes: dict[str, int],
                     target: float) -> dict[str, float]:
    """Per-layer rates at an overall sparsity of about ``target``: the layers whose accuracy
    holds up best take the highest rates.

    For a tolerated accuracy drop d, each layer gets the highest scanned rate whose accuracy
    stays within d of its best; d is found by bisection so the weighted sparsity meets target."""
    check_rate(target)
    total = sum(sizes.values())

    def plan_for(drop):
        plan = {}
        for name, accs in scan.items():
            ok = [r for r, a in zip(rates, accs) if a >= max(accs) - drop]
            plan[name] = max(ok) if ok else 0.0
        return plan

    def overall(plan):
        return sum(plan[n] * sizes[n] for n in plan) / total

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if overall(plan_for(mid)) < target:
            lo = mid
        else:
            hi = mid
    plan = plan_for(hi)
    # Scanned rates are coarse: scale the plan so it lands on the target sparsity exactly.
    scale = target / max(overall(plan), 1e-9)
    return {n: min(r * scale, 0.99) for n, r in plan.items()}


# -- structured (channel) pruning with torch-pruning ----------------------------------------

IMPORTANCES = ("l1", "l2")


def prune_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d, next_conv: nn.Conv2d, rate: float
               ) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]:
    """Channel pruning by hand for conv → bn → ReLU → next_conv: keep the round((1 - rate) · C)
    output channels of ``conv`` whose filters have the largest L2 norm (in their original
    order), and slice the batch norm and ``next_conv``'s input channels to match. New modules;
    the originals are left as they are. Only where nothing else reads ``conv``'s output: a
    residual sum ties channels across layers, which is what torch-pruning's graph handles."""
    rate = check_rate(rate)
    keep = max(1, round((1 - rate) * conv.out_channels))
    idx = conv.weight.detach().flatten(1).norm(dim=1).topk(keep).indices.sort().values
    thin = nn.Conv2d(conv.in_channels, keep, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, bias=conv.bias is not None)
    thin_bn = nn.BatchNorm2d(keep, eps=bn.eps, momentum=bn.momentum)
    nxt = nn.Conv2d(keep, next_conv.out_channels, next_conv.kernel_size, next_conv.stride,
                    next_conv.padding, next_conv.dilation, bias=next_conv.bias is not None)
    with torch.no_grad():
        thin.weight.copy_(conv.weight[idx])
        if conv.bias is not None:
            thin.bias.copy_(conv.bias[idx])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(thin_bn, name).copy_(getattr(bn, name)[idx])
        nxt.weight.copy_(next_conv.weight[:, idx])
        if next_conv.bias is not None:
            nxt.bias.copy_(next_conv.bias)
    return thin.eval(), thin_bn.eval(), nxt.eval()


def _kept(channels: int, rate: float) -> int:
    """Channels torch-pruning keeps of ``channels`` at ``rate`` (it truncates, as here)."""
    return int(channels * (1 - rate))


def structured(model: nn.Module, rate: float, example: torch.Tensor, keep=None,
               inplace: bool = False, importance: str = "l2") -> nn.Module:
    """Remove ``rate`` of the output channels of every Conv2d and Linear (the last Linear, the
    classifier, is kept whole unless ``keep`` names other layers), reading shapes from ``example``.

    Magnitude importance (L1 or L2 norm of each channel's weights) ranks channels inside each
    dependency group; torch-pruning's graph shrinks every coupled layer with them. A rate that
    would leave a layer with no channel is an error naming the layer: torch-pruning would skip
    that group and return it unpruned without a word."""
    import torch_pruning as tp

    rate = check_rate(rate)
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES} (the norm of each channel's "
                         f"weights), got {importance!r}")
    if not isinstance(example, torch.Tensor):
        raise TypeError("example must be an input tensor the model accepts, e.g. "
                        f"torch.zeros(1, 1, 28, 28); got {type(example).__name__}")
    model = model if inplace else clone(model)
    layers = prunable_layers(model)
    if keep is None:  # the final classifier: its outputs are the classes
        keep = [m for m in layers.values() if isinstance(m, nn.Linear)][-1:]
    kept_ids = {id(m) for m in keep}
    targets = {name: m for name, m in layers.items() if id(m) not in kept_ids}
    before = {name: _out_channels(m) for name, m in targets.items()}
    for name, c in before.items():
        if _kept(c, rate) == 0:
            raise ValueError(
                f"rate {rate} would leave layer {name!r} ({type(layers[name]).__name__}, {c} "
                f"output channels) with none; the highest rate that keeps one channel there is "
                f"{_max_rate(c)}. Use a lower rate, or name the layer in keep=[...].")
    if rate == 0:
        return model.eval()
    imp = tp.importance.MagnitudeImportance(p=2 if importance == "l2" else 1)
    pruner = tp.pruner.BasePruner(model.eval(), example, importance=imp,
                                  pruning_ratio=rate, ignored_layers=list(keep))
    pruner.step()
    skipped = [f"{name} ({before[name]} channels, expected {_kept(before[name], rate)})"
               for name, m in targets.items()
               if _out_channels(m) == before[name] != _kept(before[name], rate)]
    if skipped:
        raise RuntimeError(
            f"torch-pruning left {len(skipped)} layer(s) unpruned at rate {rate}: "
            f"{', '.join(skipped)}. Its dependency graph could not prune them (an operation it "
            "does not trace, or a layer it will not empty); name them in keep=[...] to leave "
            "them whole on purpose.")
    return model.eval()


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def _max_rate(channels: int) -> float:
    """The largest rate, to 2 decimals, at which ``channels`` keeps at least one channel."""
    r = int((1 - 1 / channels) * 100) / 100
    while _kept(channels, r) < 1:
        r = round(r - 0.01, 2)
    return r


# -- one model at many rates, as fast as a slider needs (widgets.prune_panel) ---------------

class RateSweep:
    """``model`` pruned at one rate after another; ``at(rate, method)`` gives the numbers 01's
    slider shows: accuracy on ``images``, non-zeros, parameters, bytes, gzip, batch-1 latency.

    Unstructured: one global magnitude threshold per rate, every slider step's read from one
    sort, written into one dense working copy (raw bytes and latency should not move while gzip
    and non-zeros do). Structured: torch-pruning; the last three rates' models are kept."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 step: float = 0.05, latency_runs: int = 10):
        from .sizes import saved_size

        self.base, self.images, self.labels = model.eval(), images, labels
        self.latency_runs = latency_runs
        self.work = copy.deepcopy(self.base).eval()
        self.layers = prunable_layers(self.work)
        self.originals = {n: m.weight.detach() for n, m in prunable_layers(self.base).items()}
        self.n = sum(w.numel() for w in self.originals.values())
        # The sorted copy is as large as the model: dropped once the steps' thresholds are read.
        ranked = self._magnitudes().sort().values
        ks = {round(i * step, 4): round(round(i * step, 4) * self.n)
              for i in range(int(0.95 / step + 1e-9) + 1)}
        self.thresholds = {r: ranked[k - 1].item() if k else -1.0 for r, k in ks.items()}
        del ranked
        self.dense_bytes = saved_size(self.base)
        self.others = [t for k, t in self.base.state_dict().items() if t.dtype.is_floating_point
                       and not any(k == f"{n}.weight" for n in self.layers)]
        self.pruned: OrderedDict[float, nn.Module] = OrderedDict()  # bounded: Binder has 2 GB

    def _magnitudes(self) -> torch.Tensor:
        return torch.cat([w.abs().flatten() for w in self.originals.values()])

    def unstructured(self, rate: float) -> nn.Module:
        """The working copy (rewritten by the next call) keeping exactly n - round(rate * n)
        weights: those above the threshold, then those tied at it in order (``> threshold``
        alone would drop every tie and overshoot the rate)."""
        rate = round(rate, 4)
        if rate not in self.thresholds:   # off the slider's steps: one kthvalue
            k = round(rate * self.n)
            self.thresholds[rate] = self._magnitudes().kthvalue(k).values.item() if k else -1.0
        threshold = self.thresholds[rate]
        spare = (self.n - round(rate * self.n)) - sum(
            int((w.abs() > threshold).sum()) for w in self.originals.values())
        with torch.no_grad():
            for n, m in self.layers.items():
                keep = self.originals[n].abs() > threshold
                if spare > 0:
                    tied = (self.originals[n].abs() == threshold).view(-1).nonzero().view(-1)
                    keep.view(-1)[tied[:spare]] = True
                    spare -= len(tied[:spare])
                m.weight.copy_(self.originals[n] * keep)
        return self.work

    def structured(self, rate: float) -> nn.Module:
        rate = round(rate, 4)
        if rate not in self.pruned:
            self.pruned[rate] = structured(self.base, rate, self.images[:1])
            while len(self.pruned) > 3:
                self.pruned.popitem(last=False)
        self.pruned.move_to_end(rate)
        return self.pruned[rate]

    def at(self, rate: float, method: str) -> dict:
        from . import measure

        if method == "unstructured":
            m = self.unstructured(rate)
            gz = measure.gzip_size([l.weight for l in self.layers.values()] + self.others)
            raw = self.dense_bytes  # the tensors are as large as ever: zeros take 4 bytes too
        elif method == "structured":
            m = self.structured(rate)
            raw, gz = measure.saved_size(m), measure.gzip_size(list(m.state_dict().values()))
        else:
            raise ValueError(f"method is 'unstructured' or 'structured', got {method!r}")
        acc = measure.accuracy_on(m, self.images, self.labels)
        med = measure.quick_latency(m, self.latency_runs)
        return {"accuracy": acc, "nonzero": measure.count_nonzero(m),
                "params": measure.count_params(m), "bytes": raw, "gzip_bytes": gz,
                "latency_b1_ms": med}
