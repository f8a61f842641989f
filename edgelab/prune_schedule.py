"""Channel importance and pruning schedule, compared at one budget (01_pruning_importance).

Which channels to remove (L2 magnitude, first-order Taylor, batch-norm gamma) and when (all at
once, or in small steps with a short fine-tune after each) are two independent choices. To
compare them fairly every method here ends at the same channel widths and takes the same number
of optimizer steps, on the same stream of training batches, under one learning-rate schedule
that decays over all the steps (an iterative run's segments continue it rather than restart it).
The scores and the pruning are torch-pruning's own (``tp.importance.*``, ``tp.pruner.BasePruner``
with ``iterative_steps``); ``taylor_scores`` is the one-layer score the exercise asks for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data, loop
from .prune import check_rate, clone, prunable_layers

__all__ = ["Method", "METHODS", "IMPORTANCES", "NOISE_SE", "importance", "taylor_scores",
           "split_steps", "batch_stream", "fixed_batches", "accumulate_gradients", "LinearDecay",
           "widths", "prune_and_finetune", "seconds_per_step", "layer_scores", "rank_agreement",
           "differences", "summary", "verdict"]

IMPORTANCES = ("l2", "taylor", "bn")
NOISE_SE = 2   # a difference counts as real beyond this many paired standard errors (~95 %)


@dataclass(frozen=True)
class Method:
    """One way to reach the budget: an importance, in ``iterative_steps`` pruning steps."""
    name: str
    importance: str
    iterative_steps: int = 1

    def __post_init__(self):
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if not isinstance(self.iterative_steps, int) or self.iterative_steps < 1:
            raise ValueError(f"iterative_steps is a whole number >= 1, got {self.iterative_steps!r}")


# importance x schedule: each importance once in one shot, once in four steps
METHODS = tuple(Method(f"{imp}-{'one-shot' if k == 1 else f'{k}-steps'}", imp, k)
                for imp in IMPORTANCES for k in (1, 4))


def importance(name: str, normalizer: str | None = "mean"):
    """torch-pruning's scorer for ``name``: the L2 norm of each channel's weights, the
    first-order Taylor score Σ|w · ∂L/∂w| (``multivariable=False``, its default; it reads
    ``.grad``, so compute gradients first), or |γ| of the batch norms in the group. Each group's
    scores are divided by their mean (``normalizer``, torch-pruning's default; None: raw)."""
    import torch_pruning as tp

    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2, normalizer=normalizer)
    if name == "taylor":
        return tp.importance.TaylorImportance(multivariable=False, normalizer=normalizer)
    if name == "bn":
        return tp.importance.BNScaleImportance(normalizer=normalizer)
    raise ValueError(f"importance must be one of {IMPORTANCES}, got {name!r}")


def taylor_scores(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The first-order Taylor score of each output channel of one layer: Σ |w · ∂L/∂w| over the
    channel's weights, |·| taken per weight before the sum, as torch-pruning's
    ``TaylorImportance(multivariable=False)`` does. (|w · g| estimates how much the loss would
    change if that weight were set to zero; Molchanov et al., CVPR 2019.)"""
    if weight.shape != grad.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and its gradient {tuple(grad.shape)} "
                         "must have the same shape")
    return (weight.detach() * grad.detach()).abs().flatten(1).sum(1)


def split_steps(total: int, parts: int) -> list[int]:
    """``total`` fine-tune steps over ``parts`` segments, as equal as whole steps allow (the
    first segments take the remainder), summing to ``total``."""
    if not isinstance(total, int) or not isinstance(parts, int) or parts < 1 or total < parts:
        raise ValueError(f"need whole numbers with total >= parts >= 1 (at least one fine-tune "
                         f"step after each pruning step), got total={total!r}, parts={parts!r}")
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def batch_stream(batch_size: int = 64, seed: int = 1, split: str = "train", flip: bool = True):
    """Training batches without end, epoch after epoch of one seeded loader: every method that
    draws from a stream with the same seed sees the same batches in the same order, however its
    steps are split into segments."""
    batches = data.loader(split, batch_size, flip=flip, seed=seed)
    while True:
        yield from batches


def fixed_batches(n: int, batch_size: int = 128, seed: int = 2) -> list:
    """``n`` training batches, the same on every call (no flips): what Taylor importance reads
    its gradient from, drawn apart from the fine-tune's stream."""
    stream = batch_stream(batch_size, seed, flip=False)
    return [next(stream) for _ in range(n)]


def accumulate_gradients(model: nn.Module, batches) -> nn.Module:
    """Fresh ``.grad`` on every parameter: the cross-entropy's gradient summed over ``batches``
    (each batch's mean loss), computed in eval mode so the batch-norm statistics do not move."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    return model


class LinearDecay(loop.Callback):
    """The learning rate falls linearly from ``lr`` to 0 over ``total`` steps, counted from
    ``offset`` (the steps earlier segments took): one schedule across an iterative run."""

    def __init__(self, lr: float, total: int, offset: int = 0):
        self.lr, self.total, self.offset = lr, total, offset

    def before_step(self, state):
        t = self.offset + state.step
        for g in state.optimizer.param_groups:
            g["lr"] = self.lr * max(0.0, 1 - t / self.total)


class _Tick(loop.Callback):
    def __init__(self, bar):
        self.bar = bar

    def after_step(self, state):
        if self.bar is not None:
            self.bar.update(1)


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels (or features) of every Conv2d and Linear: the budget, layer by layer."""
    return {n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for n, m in prunable_layers(model).items()}


def prune_and_finetune(model: nn.Module, rate: float, method: Method, steps: int, *,
                       lr: float = 0.02, batch_size: int = 64, seed: int = 1,
                       grad_batches: list | None = None, bar=None) -> nn.Module:
    """A pruned and fine-tuned copy of ``model``: ``rate`` of every layer's channels removed
    (the classifier kept whole) by ``method``'s importance in its ``iterative_steps`` steps,
    each followed by its share of ``steps`` SGD steps (momentum 0.9, weight decay 5e-4, the
    learning rate decaying linearly over all of them). Taylor importance reads the gradient of
    ``grad_batches`` (fixed, the same at every pruning step). ``bar`` (a tqdm) ticks per step."""
    import torch_pruning as tp

    rate = check_rate(rate)
    if method.importance == "taylor" and not grad_batches:
        raise ValueError("Taylor importance needs grad_batches: the (images, labels) batches "
                         "whose loss gradient it reads")
    model = clone(model).cpu().eval()
    example = torch.zeros(1, *data.INPUT_SHAPE)
    fc = [m for m in prunable_layers(model).values() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.BasePruner(model, example, importance=importance(method.importance),
                                  pruning_ratio=rate, iterative_steps=method.iterative_steps,
                                  ignored_layers=fc)
    before = widths(model)
    stream, done = batch_stream(batch_size, seed), 0
    for part in split_steps(steps, method.iterative_steps):
        if method.importance == "taylor":
            accumulate_gradients(model, grad_batches)
        pruner.step()
        model.zero_grad(set_to_none=True)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)   # new: the pruned tensors are new parameters
        loop.run(model, stream, opt, steps=part, device="cpu",
                 callbacks=[LinearDecay(lr, steps, done), _Tick(bar)])
        done += part
    want = {n: c if m in fc else int(c * (1 - rate))
            for (n, c), m in zip(before.items(), prunable_layers(model).values())}
    got = widths(model)
    if got != want:
        off = {n: (got[n], want[n]) for n in want if got[n] != want[n]}
        raise RuntimeError(f"{method.name} did not end at the budget: (got, wanted) channels {off}")
    return model.eval()


def layer_scores(model: nn.Module, layer: nn.Module, name: str = "taylor"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """torch-pruning's raw ``name`` scores for ``layer``'s output channels: from the layer's own
    weights alone, and from the whole dependency group the pruner ranks (the layer, its batch
    norm, the next layer's input weights, ...). Needs ``.grad`` for Taylor importance."""
    import torch_pruning as tp

    imp = importance(name, normalizer=None)
    dg = tp.DependencyGraph().build_dependency(model, torch.zeros(1, *data.INPUT_SHAPE))
    group = dg.get_pruning_group(layer, tp.prune_conv_out_channels,
                                 idxs=list(range(layer.out_channels)))
    own = tp.dependency.Group()
    own._group, own._DG = [group._group[0]], group._DG
    return imp(own), imp(group)



def seconds_per_step(model: nn.Module, steps: int = 10, batch_size: int = 64) -> float:
    """The wall time of one fine-tune step of ``model`` here (a copy, after one warm-up step)."""
    m = clone(model).cpu()
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    stream = batch_stream(batch_size, seed=0)
    loop.run(m, stream, opt, steps=1, device="cpu")
    start = time.perf_counter()
    loop.run(m, stream, opt, steps=steps, device="cpu")
    return (time.perf_counter() - start) / steps


def rank_agreement(a: torch.Tensor, b: torch.Tensor, keep: int) -> tuple[float, int]:
    """How alike two channel rankings are: Spearman's rank correlation (ties broken by
    position) and how many of the ``keep`` top channels they share."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"two 1-D score vectors of one layer, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = (x.argsort().argsort().double() for x in (a, b))
    rho = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    shared = len(set(a.topk(keep).indices.tolist()) & set(b.topk(keep).indices.tolist()))
    return rho, shared


def differences(records: list, pairs) -> dict:
    """Test-accuracy differences in points with their paired standard errors, for each
    ``(a, b)`` pair of record names: ``{"a - b": {"delta_pt", "se_pt", "real"}}``."""
    from .records import find
    from .tables import paired_delta

    out = {}
    for a, b in pairs:
        d, se = paired_delta(find(records, a), find(records, b))
        out[f"{a} - {b}"] = {"delta_pt": d, "se_pt": se,
                             "real": se is not None and abs(d) > NOISE_SE * se}
    return out


def summary(records: list, baseline: str = "student", reference: str = "l2-one-shot") -> str:
    """A text table: validation and test accuracy, the test difference (points ± paired SE)
    against the unpruned ``baseline`` and against ``reference``, parameters and MACs."""
    from .records import find
    from .tables import paired_delta

    base, ref = find(records, baseline), find(records, reference)

    def delta(r, other):
        if r is other:
            return "-"
        d, se = paired_delta(r, other)
        return f"{d:+.2f}" + (f" ±{se:.2f}" if se is not None else "")
    head = ["method", "val acc", "test acc", f"Δ vs {baseline}", f"Δ vs {reference}", "params",
            "MACs"]
    rows = [[r["name"], f"{100 * r['val_accuracy']:.2f} %", f"{100 * r['accuracy']:.2f} %",
             delta(r, base), delta(r, ref), f"{r['params']:,}", f"{r['macs'] / 1e6:.2f} M"]
            for r in records]
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i])  # noqa: E731
                                   for i, c in enumerate(cells))
    return "\n".join([line(head), line(["-" * n for n in w])] + [line(r) for r in rows])


def verdict(records: list, methods=METHODS, reference: str = "l2-one-shot") -> str:
    """One sentence, from the numbers: the method with the best *validation* accuracy (the
    choice), and whether its test difference from ``reference`` is beyond noise."""
    from .records import find

    best = max((find(records, m.name) for m in methods), key=lambda r: r["val_accuracy"])
    if best["name"] == reference:
        others = [find(records, m.name) for m in methods if m.name != reference]
        rival = max(others, key=lambda r: r["val_accuracy"])
        d = differences(records, [(reference, rival["name"])])[f"{reference} - {rival['name']}"]
        head = (f"{reference} has the best validation accuracy; on test it is "
                f"{d['delta_pt']:+.2f} ± {d['se_pt']:.2f} pt against the runner-up, {rival['name']}")
    else:
        d = differences(records, [(best["name"], reference)])[f"{best['name']} - {reference}"]
        head = (f"{best['name']} has the best validation accuracy; on test it is "
                f"{d['delta_pt']:+.2f} ± {d['se_pt']:.2f} pt against {reference}")
    head += (f", a real difference (beyond {NOISE_SE} paired standard errors)" if d["real"]
             else f", within noise (inside {NOISE_SE} paired standard errors)")
    steps = [(m, next(o for o in methods if o.importance == m.importance and o.iterative_steps == 1))
             for m in methods if m.iterative_steps > 1]
    ds = [differences(records, [(m.name, o.name)])[f"{m.name} - {o.name}"] for m, o in steps]
    worse = sum(d["real"] and d["delta_pt"] < 0 for d in ds)
    better = sum(d["real"] and d["delta_pt"] > 0 for d in ds)
    return head + (f"; pruning in steps instead of at once was worse for {worse}, better for "
                   f"{better} and within noise for {len(ds) - worse - better} of the {len(ds)} "
                   "importances.")
