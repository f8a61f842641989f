"""check.taylor_scores (edgelab.check_importance) cannot be fooled: each typical wrong Taylor
score is rejected with a hint naming its mistake and a printout of the failing case, every
equivalent right answer is accepted, and the reference is what torch-pruning computes."""
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from edgelab import check, prune_schedule


def judge(fn, capsys):
    capsys.readouterr()
    accepted = check.taylor_scores(fn) is fn
    return accepted, capsys.readouterr().out


def _dims(w):
    return tuple(range(1, w.dim()))


WRONG = {
    "no-abs": (lambda w, g: (w * g).sum(_dims(w)), "take the absolute value"),
    "abs-of-the-sum": (lambda w, g: (w * g).sum(_dims(w)).abs(), "before summing"),
    "squared": (lambda w, g: (w * g).pow(2).sum(_dims(w)), "squared variant"),
    "weight-alone": (lambda w, g: w.abs().sum(_dims(w)), "L1 magnitude"),
    "weight-squared": (lambda w, g: w.pow(2).sum(_dims(w)), "squared L2 magnitude"),
    "gradient-alone": (lambda w, g: g.abs().sum(_dims(w)), "leaves out the weight"),
    "mean-not-sum": (lambda w, g: (w * g).abs().mean(_dims(w)), "do not average"),
    "over-dim-0": (lambda w, g: (w * g).abs().sum((0, 2, 3)), "you summed over dim 0"),
    "not-summed": (lambda w, g: (w * g).abs(), "sum each channel's products"),
    "whole-tensor": (lambda w, g: (w * g).abs().sum(), "you summed the whole tensor"),
    "spatial-only": (lambda w, g: (w * g).abs().sum((2, 3)), "sum over the input channels too"),
    "in-place": (lambda w, g: w.mul_(g).abs_().flatten(1).sum(1), "in place"),
}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_a_typical_wrong_taylor_score_is_rejected_and_named(name, capsys):
    fn, hint = WRONG[name]
    accepted, out = judge(fn, capsys)
    assert not accepted, f"{name} was accepted:\n{out}"
    assert "checks failed" in out and hint in out, f"{name}: no {hint!r} in\n{out}"
    assert all(f"\n      {row}:" in out for row in ("input", "expected", "got")), out


RIGHT = {
    "flatten-sum": lambda w, g: (w * g).abs().flatten(1).sum(1),
    "sum-dims": lambda w, g: (w * g).abs().sum(dim=(1, 2, 3)),
    "einsum-of-abs": lambda w, g: torch.einsum("oikl->o", (w * g).abs()),
    "abs-times-abs": lambda w, g: (w.abs() * g.abs()).reshape(w.shape[0], -1).sum(-1),
    # once |.| is taken, the gradient's sign does not matter: descent's -g gives the same score
    "negated-gradient": lambda w, g: (w * -g).abs().flatten(1).sum(1),
    "loop": lambda w, g: torch.stack([(w[c] * g[c]).abs().sum() for c in range(w.shape[0])]),
    "float64": lambda w, g: (w.double() * g.double()).abs().flatten(1).sum(1),
}


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_a_right_taylor_score_in_any_equivalent_form_is_accepted(name, capsys):
    accepted, out = judge(RIGHT[name], capsys)
    assert accepted and "checks passed" in out, f"{name} was rejected:\n{out}"


def test_the_reference_is_torch_prunings_default_taylor_importance():
    # One conv, its output the model's output: its dependency group is that conv alone, so
    # TaylorImportance without normalization is the layer's own score.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1))
    model(torch.randn(3, 2, 6, 6)).pow(2).mean().backward()
    w = model[0].weight
    group = tp.DependencyGraph().build_dependency(model, torch.zeros(1, 2, 6, 6)) \
        .get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(5)))
    theirs = tp.importance.TaylorImportance(normalizer=None)(group)
    assert torch.allclose(prune_schedule.taylor_scores(w, w.grad), theirs)
    # and it is not the multivariable score, |Σ w·g|, which the checker names as a mistake
    multi = tp.importance.TaylorImportance(normalizer=None, multivariable=True)(group)
    assert not torch.allclose(prune_schedule.taylor_scores(w, w.grad), multi)


def test_a_shape_mismatch_between_weight_and_gradient_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        prune_schedule.taylor_scores(torch.ones(2, 3), torch.ones(3, 2))
