"""Pruning: magnitude masks and structured channel pruning (``sensitivity`` prunes at many rates).

Unstructured pruning zeroes single weights and keeps them zero with ``torch.nn.utils.prune``
masks; the tensors stay dense, so neither the file nor dense inference shrinks. Structured
pruning removes whole channels with torch-pruning's dependency graph, so every coupled layer
(the residual adds, the batch norms, the next convolution's inputs) shrinks with them.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

__all__ = ["PRUNABLE", "check_rate", "prunable_layers", "clone", "magnitude_threshold",
           "magnitude_mask", "unstructured", "remove_masks", "csr_bytes", "prune_pair", "sparsity",
           "IMPORTANCES", "structured"]

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
