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
    timing = panel.sweep("x", [5, 6, 7])
    assert calls == [1, 4, 5, 6, 7] and timing["moves"] == 3 and timing["median_s"] >= 0


def test_panel_names_its_controls_when_asked_for_an_unknown_one():
    panel = widgets.Panel({"x": W.IntSlider()}, lambda x: {})
    with pytest.raises(KeyError, match="'x'"):
        panel.set(y=1)


def test_timing_without_moves_says_why():
    panel = widgets.Panel({"x": W.IntSlider(value=3)}, lambda x: {})
    with pytest.raises(ValueError, match="no moves"):
        panel.sweep("x", [3])


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
