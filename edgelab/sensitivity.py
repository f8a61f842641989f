"""One model pruned at many rates: how accuracy answers each layer's rate (``sensitivity_scan``,
and ``sensitivity_plan``, the per-layer rates it suggests), and the whole model at slider speed
(``RateSweep``, behind 01's prune panel). The pruning itself is ``prune``'s.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn

from . import prune
from .counts import count_nonzero, count_params
from .evaluation import accuracy_on
from .latency import quick_latency
from .sizes import gzip_size, saved_size

__all__ = ["sensitivity_scan", "sensitivity_plan", "RateSweep"]


# -- one layer at a time ----------------------------------------------------------------------

@torch.no_grad()
def sensitivity_scan(model: nn.Module, rates, images: torch.Tensor, labels: torch.Tensor,
                     layers=None, progress: bool = True) -> dict[str, list[float]]:
    """Accuracy on (images, labels) when one layer at a time is pruned at each rate."""
    from tqdm.auto import tqdm

    rates = [prune.check_rate(r) for r in rates]
    model = model.eval()
    all_layers = prune.prunable_layers(model)
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
    prune.check_rate(target)
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


# -- one model at many rates, as fast as a slider needs (widgets.prune_panel) ---------------

class RateSweep:
    """``model`` pruned at one rate after another; ``at(rate, method)`` gives the numbers 01's
    slider shows: accuracy on ``images``, non-zeros, parameters, bytes, gzip, batch-1 latency.

    Unstructured: one global magnitude threshold per rate, every slider step's read from one
    sort, written into one dense working copy (raw bytes and latency should not move while gzip
    and non-zeros do). Structured: torch-pruning; the last three rates' models are kept."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 step: float = 0.05, latency_runs: int = 10):
        self.base, self.images, self.labels = model.eval(), images, labels
        self.latency_runs = latency_runs
        self.work = copy.deepcopy(self.base).eval()
        self.layers = prune.prunable_layers(self.work)
        self.originals = {n: m.weight.detach() for n, m in prune.prunable_layers(self.base).items()}
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
            self.pruned[rate] = prune.structured(self.base, rate, self.images[:1])
            while len(self.pruned) > 3:
                self.pruned.popitem(last=False)
        self.pruned.move_to_end(rate)
        return self.pruned[rate]

    def at(self, rate: float, method: str) -> dict:
        if method == "unstructured":
            m = self.unstructured(rate)
            gz = gzip_size([l.weight for l in self.layers.values()] + self.others)
            raw = self.dense_bytes  # the tensors are as large as ever: zeros take 4 bytes too
        elif method == "structured":
            m = self.structured(rate)
            raw, gz = saved_size(m), gzip_size(list(m.state_dict().values()))
        else:
            raise ValueError(f"method is 'unstructured' or 'structured', got {method!r}")
        acc = accuracy_on(m, self.images, self.labels)
        med = quick_latency(m, self.latency_runs)
        return {"accuracy": acc, "nonzero": count_nonzero(m),
                "params": count_params(m), "bytes": raw, "gzip_bytes": gz,
                "latency_b1_ms": med}
