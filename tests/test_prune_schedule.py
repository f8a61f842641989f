"""edgelab.prune_schedule: every method ends at the same channel budget after the same number of
fine-tune steps on the same batches, and the comparison's table and verdict come from the
numbers. Runs on a tiny untrained Student, a few steps each."""
import pytest
import torch

from edgelab import models, prune_schedule as ps
from edgelab.evaluation import pack_mask


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return models.Student(widths=(4, 8), blocks=1).eval()


@pytest.fixture(scope="module")
def grads():
    return ps.fixed_batches(1, batch_size=16)


def test_methods_cover_each_importance_one_shot_and_iterative():
    assert {(m.importance, m.iterative_steps) for m in ps.METHODS} == {
        (imp, k) for imp in ps.IMPORTANCES for k in (1, 4)}
    assert len({m.name for m in ps.METHODS}) == len(ps.METHODS)


def test_a_method_with_an_unknown_importance_or_no_steps_is_an_error():
    with pytest.raises(ValueError, match="importance must be one of"):
        ps.Method("x", "l1")
    with pytest.raises(ValueError, match="iterative_steps"):
        ps.Method("x", "l2", 0)
    with pytest.raises(ValueError, match="importance must be one of"):
        ps.importance("random")


def test_split_steps_sums_to_the_total_as_evenly_as_whole_steps_allow():
    assert ps.split_steps(10, 4) == [3, 3, 2, 2]
    assert ps.split_steps(8, 1) == [8]
    assert sum(ps.split_steps(401, 4)) == 401
    with pytest.raises(ValueError, match="at least one fine-tune step"):
        ps.split_steps(3, 4)


def test_the_batch_stream_is_the_same_however_it_is_split_and_goes_on_past_an_epoch():
    a = ps.batch_stream(batch_size=20000, seed=3)
    b = ps.batch_stream(batch_size=20000, seed=3)
    first = [next(a)[1] for _ in range(4)]           # 55k images: the 4th batch is the next epoch
    second = [next(b)[1] for _ in range(2)] + [next(b)[1] for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], first[3][:len(first[0])])


def test_fixed_batches_are_the_same_on_every_call():
    a, b = ps.fixed_batches(2, batch_size=8), ps.fixed_batches(2, batch_size=8)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_linear_decay_continues_one_schedule_across_segments():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    state = type("S", (), {"optimizer": opt, "step": 2})()
    ps.LinearDecay(0.1, total=10, offset=4).before_step(state)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 6 / 10))


@pytest.mark.parametrize("method", ps.METHODS, ids=lambda m: m.name)
def test_every_method_ends_at_the_same_widths_and_leaves_the_original_alone(tiny, grads, method):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    pruned = ps.prune_and_finetune(tiny, 0.5, method, steps=4, batch_size=8, grad_batches=grads)
    want = {n: (c if n == "fc" else int(c * 0.5)) for n, c in ps.widths(tiny).items()}
    assert ps.widths(pruned) == want
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_every_method_takes_exactly_the_steps_it_is_given(tiny, grads, monkeypatch):
    taken = []
    real = ps.loop.run
    monkeypatch.setattr(ps.loop, "run", lambda *a, steps, **k: taken.append(steps) or real(*a, steps=steps, **k))
    ps.prune_and_finetune(tiny, 0.5, ps.Method("it", "l2", 4), steps=6, batch_size=8)
    assert taken == [2, 2, 1, 1]


def test_taylor_importance_without_gradient_batches_is_an_error(tiny):
    with pytest.raises(ValueError, match="grad_batches"):
        ps.prune_and_finetune(tiny, 0.5, ps.Method("t", "taylor"), steps=2)


def test_accumulate_gradients_leaves_the_batch_norm_statistics_alone(tiny, grads):
    m = models.Student(widths=(4, 8), blocks=1)
    mean = m.stem[1].running_mean.clone()
    ps.accumulate_gradients(m, grads)
    assert torch.equal(m.stem[1].running_mean, mean)
    assert all(p.grad is not None for p in m.parameters())


def test_layer_scores_own_part_is_the_layers_taylor_score(tiny, grads):
    m = models.Student(widths=(4, 8), blocks=1)
    ps.accumulate_gradients(m, grads)
    layer = m.stages[1][0].conv1
    own, group = ps.layer_scores(m, layer, "taylor")
    assert torch.allclose(own, ps.taylor_scores(layer.weight, layer.weight.grad))
    assert group.shape == own.shape


def test_rank_agreement_counts_shared_top_channels_and_rank_correlation():
    a = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert ps.rank_agreement(a, a, 2) == (pytest.approx(1.0), 2)
    assert ps.rank_agreement(a, a.flip(0), 2) == (pytest.approx(-1.0), 0)
    with pytest.raises(ValueError, match="1-D"):
        ps.rank_agreement(a, a[:3], 2)


def test_seconds_per_step_is_a_positive_time(tiny):
    assert 0 < ps.seconds_per_step(tiny, steps=1, batch_size=4) < 60


def _rec(name, right, val):
    mask = torch.tensor(right, dtype=torch.bool)
    return {"name": name, "accuracy": float(mask.float().mean()), "test_images": len(mask),
            "correct": pack_mask(mask), "val_accuracy": val, "params": 100, "macs": 2_000_000}


def _records(l2, taylor_val=0.8):
    n = 400
    base = [True] * n
    rs = [_rec("student", base, 0.9), _rec("l2-one-shot", l2, 0.7)]
    for m in ps.METHODS[1:]:
        rs.append(_rec(m.name, [True] * 300 + [False] * 100, taylor_val if m.name == "taylor-one-shot" else 0.5))
    return rs


def test_a_large_paired_difference_is_called_real_and_a_small_one_noise():
    rs = _records([True] * 200 + [False] * 200)
    d = ps.differences(rs, [("taylor-one-shot", "l2-one-shot")])["taylor-one-shot - l2-one-shot"]
    assert d["delta_pt"] == pytest.approx(25.0) and d["real"]
    rs = _records([True] * 298 + [False] * 102)
    d = ps.differences(rs, [("taylor-one-shot", "l2-one-shot")])["taylor-one-shot - l2-one-shot"]
    assert not d["real"]


def test_the_verdict_names_the_validation_choice_and_says_when_it_is_within_noise():
    text = ps.verdict(_records([True] * 298 + [False] * 102))
    assert text.startswith("taylor-one-shot has the best validation accuracy")
    assert "within noise" in text
    text = ps.verdict(_records([True] * 200 + [False] * 200, taylor_val=0.6))
    assert text.startswith("l2-one-shot has the best validation accuracy") and "runner-up" in text
    assert "real difference" in text
    # every method but l2-one-shot (50 % right) gets the same 75 % right: l2's steps beat its
    # one shot, Taylor's and BN's steps tie theirs
    assert "worse for 0, better for 1 and within noise for 2 of the 3 importances" in text


def test_the_summary_lists_every_record_with_both_differences():
    text = ps.summary(_records([True] * 200 + [False] * 200))
    lines = text.splitlines()
    assert "Δ vs student" in lines[0] and "Δ vs l2-one-shot" in lines[0]
    assert len(lines) == 2 + 1 + len(ps.METHODS)
    assert "2.00 M" in lines[2] and "+25.00" in text


@pytest.mark.parametrize("name", ps.IMPORTANCES)
def test_each_importance_is_torch_prunings_own_scorer_with_the_normalizer_asked_for(name):
    import torch_pruning as tp
    imp = ps.importance(name, normalizer=None)
    assert isinstance(imp, tp.importance.Importance) and imp.normalizer is None
    assert ps.importance(name).normalizer == "mean"
