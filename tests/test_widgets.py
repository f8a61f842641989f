import ipywidgets as W
import pytest
import torch

from edgelab import models, widgets


def test_panel_recomputes_when_a_control_moves_and_times_each_move():
    calls = []
    panel = widgets.Panel({"x": W.IntSlider(value=1, min=0, max=10)},
                          lambda x: calls.append(x) or {"double": 2 * x})
    assert panel.result == {"double": 2, "x": 1}
    assert panel.set(x=4) == {"double": 8, "x": 4}
    moves = panel.sweep("x", [5, 6, 7])
    assert [m["double"] for m in moves] == [10, 12, 14] and moves == panel.history[-3:]
    timing = panel.timing(last=len(moves))
    assert calls == [1, 4, 5, 6, 7] and timing["moves"] == 3 and timing["median_s"] >= 0
    assert panel.timing()["moves"] == 4  # every move after the initial update


def test_panel_names_its_controls_when_asked_for_an_unknown_one():
    panel = widgets.Panel({"x": W.IntSlider()}, lambda x: {})
    with pytest.raises(KeyError, match="'x'"):
        panel.set(y=1)


def test_panel_closes_the_figure_each_move_draws_and_no_other():
    import matplotlib.pyplot as plt

    mine = plt.figure()  # a learner's own figure stays open

    def render(r, _panel):
        plt.subplots()
        plt.show()
    panel = widgets.Panel({"x": W.IntSlider(value=1)}, lambda x: {}, render=render)
    panel.sweep("x", [2, 3, 4])
    assert plt.get_fignums() == [mine.number]
    plt.close(mine)


def test_timing_without_moves_says_why():
    panel = widgets.Panel({"x": W.IntSlider(value=3)}, lambda x: {})
    assert panel.sweep("x", [3]) == []  # the value already shown: no move
    with pytest.raises(ValueError, match="no moves"):
        panel.timing()
    with pytest.raises(ValueError, match="no moves"):
        panel.timing(last=0)


@pytest.fixture(scope="module")
def prune_panel():
    torch.manual_seed(0)
    model = models.student(widths=(8, 16), blocks=1).eval()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    return widgets.prune_panel(model, x, y, latency_runs=2)


def test_moving_the_prune_rate_lowers_non_zeros_and_gzip_but_not_raw_bytes(prune_panel):
    start = prune_panel.set(method="unstructured", rate=0.0)
    moved = prune_panel.set(rate=0.8)
    assert moved["rate"] == 0.8 and moved["nonzero"] < 0.3 * start["nonzero"]
    assert moved["gzip_bytes"] < start["gzip_bytes"] and moved["bytes"] == start["bytes"]


def test_structured_method_shrinks_parameters_and_bytes(prune_panel):
    prune_panel.set(method="unstructured", rate=0.0)
    dense = prune_panel.result
    half = prune_panel.set(method="structured", rate=0.5)
    assert half["params"] < 0.4 * dense["params"] and half["bytes"] < 0.6 * dense["bytes"]
    assert 0 <= half["accuracy"] <= 1 and half["latency_b1_ms"] > 0


def test_distill_panel_flattens_both_distributions_as_t_rises():
    import torch

    from edgelab import data
    t_logits = torch.tensor([[6.0, 1.0, 0.0] + [0.0] * 7, [0.0, 5.0, 2.0] + [0.0] * 7])
    s_logits = torch.tensor([[3.0, 1.0, 0.5] + [0.0] * 7, [0.5, 2.0, 1.0] + [0.0] * 7])
    panel = widgets.distill_panel(t_logits, s_logits, torch.tensor([0, 1]), data.CLASSES)
    cold = panel.set(T=1.0)
    hot = panel.set(T=10.0)
    assert max(hot["teacher_p"]) < max(cold["teacher_p"])
    assert max(hot["student_p"]) < max(cold["student_p"])
    assert panel.set(alpha=0.0)["total"] == pytest.approx(hot["hard"])
    second = panel.set(image=panel.controls["image"].options[1])
    assert max(second["teacher_p"]) != max(hot["teacher_p"])
    assert [m["T"] for m in panel.sweep("T", [2.0, 4.0])] == [2.0, 4.0]


def test_lowrank_panel_trades_parameters_for_accuracy_and_caches_each_energy():
    from edgelab import lowrank
    from edgelab.counts import count_params
    torch.manual_seed(0)
    model = models.student(widths=(8, 16), blocks=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    svds = lowrank.decompose(model)
    panel = widgets.lowrank_panel(model, x, y, energy=1.0, latency_runs=2, svds=svds)
    whole = panel.result
    assert whole["factored"] == 0 and whole["params"] == count_params(model)
    low = panel.set(energy=0.3)
    assert low["factored"] > 0 and low["ranks"] == lowrank.plan(model, 0.3, svds)
    assert low["params"] < whole["params"] and low["macs"] < whole["macs"]
    assert 0 <= low["accuracy"] <= 1 and low["latency_b1_ms"] > 0 and low["images"] == 32
    assert panel.set(energy=1.0)["params"] == whole["params"]  # the original layers swap back
    assert [m["energy"] for m in panel.sweep("energy", [0.5, 0.3])] == [0.5, 0.3]
    assert panel.history[-1] == low  # a visited energy comes from the cache
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_prune_panel_keeps_the_exact_count_when_magnitudes_tie():
    torch.manual_seed(0)
    model = models.student(widths=(4, 8), blocks=1).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.fill_(0.5)                     # every magnitude ties
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    panel = widgets.prune_panel(model, x, y, latency_runs=2)
    from edgelab.counts import count_nonzero
    dense = count_nonzero(model)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    r = panel.set(method="unstructured", rate=0.5)
    assert r["nonzero"] == dense - round(0.5 * n)
