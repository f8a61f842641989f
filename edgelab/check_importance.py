"""Checker for 01_pruning_importance's exercise: the first-order Taylor score of one layer's
output channels, Σ |w · ∂L/∂w|, against the gradient autograd computes on tiny fixed layers."""
from __future__ import annotations

from .check import Exercise, _call, _close_to_scale, _show, register

__all__ = ["taylor_scores"]


def _layer(out_c: int, in_c: int, k: int, seed: int, dead: int | None = None):
    """A conv weight and the gradient of a small classification loss with respect to it, from
    autograd: conv -> ReLU -> average pool -> a fixed linear head -> cross-entropy. With
    ``dead``, the head ignores that channel, so its gradient (and its score) is exactly 0."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_c, in_c, k, k, generator=g).requires_grad_(True)
    x = torch.randn(4, in_c, 5, 5, generator=g)
    head = torch.randn(3, out_c, generator=g)
    if dead is not None:
        head[:, dead] = 0
    y = torch.tensor([0, 1, 2, 1])
    logits = F.relu(F.conv2d(x, w, padding=k // 2)).mean((2, 3)) @ head.T
    F.cross_entropy(logits, y).backward()
    return w.detach(), w.grad.detach()


def _mistakes(w, g):
    """What the typical wrong answers return on (w, g), each with the hint that names it."""
    wg, dims = w * g, tuple(range(1, w.dim()))
    return [
        (wg.sum(dims).abs(), "take |·| of each product before summing, Σ |w · g| (torch-pruning's "
         "default, multivariable=False); |Σ w · g| is its multivariable=True variant"),
        (wg.sum(dims), "take the absolute value: Σ |w · g|, not Σ w · g (signed terms cancel)"),
        (wg.pow(2).sum(dims), "(w · g)² is the squared variant; the score asked for is Σ |w · g|"),
        (w.abs().sum(dims), "Σ |w| is the L1 magnitude: multiply each weight by its gradient"),
        (w.pow(2).sum(dims), "Σ w² is the squared L2 magnitude: multiply each weight by its "
         "gradient and take |w · g|"),
        (g.abs().sum(dims), "Σ |g| leaves out the weight: the score is Σ |w · g|"),
        (wg.abs().mean(dims), "sum over the channel's weights, do not average them (the "
         "ranking within a layer is the same, the score is not)"),
    ]


def _taylor_cases():
    import torch

    def score(fn, w, g, label):
        want = (w * g).abs().sum(tuple(range(1, w.dim())))
        got = _call(lambda: fn(w.clone(), g.clone()), "take (weight * grad).abs(), then sum each "
                    "output channel's weights: .flatten(1).sum(1)", label, want)
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"return a tensor of {w.shape[0]} scores, one per output "
                                 f"channel (got {type(got).__name__})" + _show(label, want, got))
        got = got.detach().float()
        if got.shape != want.shape:
            hint = (f"one score per *output* channel: shape ({w.shape[0]},); you returned shape "
                    f"{tuple(got.shape)}")
            if got.shape == w.shape:
                hint += " — sum each channel's products: .flatten(1).sum(1)"
            elif got.numel() == 1:
                hint += " — you summed the whole tensor; keep dim 0 (the output channels)"
            elif got.shape == (w.shape[1],) or got.shape == w.shape[1:]:
                hint += " — you summed over dim 0; dim 0 is the output channel: sum the others"
            elif got.shape == w.shape[:2]:
                hint += " — sum over the input channels too: dims 1, 2 and 3"
            raise AssertionError(hint + _show(label, want, got))
        if _close_to_scale(got, want):
            return
        for wrong, hint in _mistakes(w, g):
            if _close_to_scale(got, wrong.float()):
                raise AssertionError(hint + _show(label, want, got))
        raise AssertionError("each output channel's score is Σ |w · g| over its in · k · k "
                             "weights" + _show(label, want, got))

    def conv3x3(fn):
        w, g = _layer(3, 2, 3, seed=0)
        score(fn, w, g, "a (3, 2, 3, 3) conv weight and its gradient from autograd")

    def conv1x1(fn):
        w, g = _layer(4, 3, 1, seed=1)
        score(fn, w, g, "a (4, 3, 1, 1) conv weight and its gradient from autograd")

    def zero_gradient(fn):
        w, g = _layer(4, 2, 3, seed=2, dead=1)
        score(fn, w, g, "a (4, 2, 3, 3) conv whose channel 1 the loss ignores (gradient 0)")

    def inputs_untouched(fn):
        w, g = _layer(3, 2, 3, seed=3)
        w0, g0 = w.clone(), g.clone()
        _call(lambda: fn(w, g), "compute new tensors", "a (3, 2, 3, 3) weight", "scores")
        assert torch.equal(w, w0) and torch.equal(g, g0), (
            "your function changed the weight or the gradient in place (mul_, abs_): compute "
            "new tensors, (weight * grad).abs(), so the model is left as it was"
            + _show("a (3, 2, 3, 3) weight, before", w0, w))

    return [("a 3x3 conv", conv3x3), ("a 1x1 conv", conv1x1),
            ("a channel with zero gradient", zero_gradient), ("inputs untouched", inputs_untouched)]


taylor_scores = register(Exercise(
    "taylor_scores", notebook="01_pruning_importance",
    signature="fn(weight, grad) -> scores (out_channels,)",
    checks="Σ |w · ∂L/∂w| over each output channel's weights, |·| per weight before the sum "
    "(torch-pruning's TaylorImportance, multivariable=False), against autograd's gradient of a "
    "small loss on fixed 3x3 and 1x1 convs, one with a channel the loss ignores.",
    hint="(weight * grad).abs().flatten(1).sum(1): the absolute value of each product, summed "
    "over everything but dim 0", minutes=10, reference="edgelab.prune_schedule.taylor_scores",
    cases=_taylor_cases))
