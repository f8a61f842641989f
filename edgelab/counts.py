"""What a model is made of: parameters (all, and the non-zero ones), multiply-accumulates and
the activation memory of one forward pass. Counts are what ``measure`` records next to latency:
they travel with a model to any runtime, timings do not."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from . import data

__all__ = ["count_params", "count_nonzero", "example_input", "count_macs", "macs_by_layer",
           "peak_activation_bytes"]


def count_params(model: nn.Module) -> int:
    """Parameters that are stored: weights and biases (masked pruning counts the original)."""
    return sum(t.numel() for t in _weights(model))


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(t)) for t in _weights(model))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """The tensors a forward pass multiplies with, one per parameter, dequantized if packed."""
    out = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            # torch.nn.utils.prune keeps 'weight_orig' as the parameter and the masked 'weight'
            # as a buffer: count what the forward pass uses.
            if name.endswith("_orig") and hasattr(module, name[:-5]):
                p = getattr(module, name[:-5])
            out.append(p.detach())
        for name in ("weight", "bias"):  # quantized modules expose packed params as methods
            getter = getattr(module, name, None)
            if callable(getter) and not isinstance(getter, torch.Tensor):
                t = getter()
                if isinstance(t, torch.Tensor):
                    out.append(t.dequantize() if t.is_quantized else t.detach())
    return out


def example_input(example=None) -> torch.Tensor:
    """One input row: ``example`` (a tensor, whose first row is taken, or a full shape such as
    ``(1, 3, 32, 32)``), or by default one Fashion-MNIST-shaped image."""
    if example is None:
        return torch.zeros(1, *data.INPUT_SHAPE)
    if isinstance(example, torch.Tensor):
        return torch.zeros_like(example[:1])
    if isinstance(example, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in example):
        return torch.zeros(1, *tuple(example)[1:])
    raise TypeError(f"example must be an input tensor or its shape, e.g. (1, 3, 32, 32); "
                    f"got {example!r}")


def count_macs(model: nn.Module, example=None) -> int:
    """Multiply-accumulates of one forward pass of one ``example`` row (see ``example_input``),
    from torch's flop counter (1 MAC = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(example_input(example))
    return counter.get_total_flops() // 2


def macs_by_layer(model: nn.Module, example=None) -> dict[str, int]:
    """MACs of each Conv2d / Linear module, keyed by its name in the model."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(example_input(example))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            flops = sum(counts.get(f"{root}.{name}", {}).values())
            out[name] = flops // 2
    return out


def peak_activation_bytes(model: nn.Module, example=None, bytes_per_value: int = 4) -> dict:
    """The most activation memory one forward pass holds at once: the input, every output not
    yet consumed by its last user (a residual branch stays alive across its block) and the output
    being computed, at ``bytes_per_value`` (4: fp32, 1: int8). A liveness walk over the torch.fx
    graph with its shapes propagated; no in-place reuse or operator fusion is assumed, so a
    runtime's memory planner can do better. Returns {"peak_bytes", "at", "per_node"}."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    x = example_input(example)
    gm = symbolic_trace(copy.deepcopy(model).eval())
    ShapeProp(gm).propagate(x)
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max([index.get(u, len(nodes)) for u in n.users] or [index[n]]) for n in nodes}

    def size(n):
        meta = n.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape") or n.op == "get_attr":
            return 0
        return int(torch.Size(meta.shape).numel()) * bytes_per_value
    per_node, peak, at = [], 0, None
    for i, n in enumerate(nodes):
        live = sum(size(m) for m in nodes[:i + 1] if last_use[m] >= i)
        per_node.append((n.name, live))
        if live > peak:
            peak, at = live, n.name
    return {"peak_bytes": peak, "at": at, "per_node": per_node}
