"""The figure check itself, and every figure-drawing function of edgelab rendered on fixed records
and read by it: no two text boxes overlap, every one lies inside the figure."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from edgelab import figures, models, plots, widgets  # noqa: E402


@pytest.fixture(autouse=True)
def _styled():
    figures.style()
    yield
    plt.close("all")


def _record(name, acc, nbytes, ms, runtime="torch", n=10000):
    return {"name": name, "runtime": runtime, "accuracy": acc, "test_images": n, "bytes": nbytes,
            "latency_b1_ms": ms, "latency_b64_ms": 20 * ms}


# A crowded set like 03's and 06's: near-identical sizes, long names, five seeds of two recipes.
RECORDS = ([_record("teacher", 0.9373, 44_768_203, 8.8), _record("teacher", 0.9373, 44_758_632, 2.1, "onnxruntime"),
            _record("pruned50", 0.9348, 11_265_035, 0.58, "onnxruntime"),
            _record("pruned50-int8", 0.9355, 2_924_301, 0.25, "onnxruntime"),
            _record("student-int8", 0.9301, 257_188, 0.18, "onnxruntime")]
           + [_record(f"student-kd-s{k}", 0.930 + 0.0003 * k, 733_647, 1.5 + 0.4 * k) for k in range(5)]
           + [_record(f"student-scratch-s{k}", 0.926 + 0.0004 * k, 733_647, 1.6 + 0.3 * k)
              for k in range(5)])


def test_problems_names_two_overlapping_labels():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "first label")
    ax.text(0.5, 0.5, "second label")
    found = figures.problems(fig)
    assert any("'first label'" in p and "'second label'" in p and "overlaps" in p for p in found)


def test_problems_names_a_label_that_leaves_the_figure():
    fig, ax = plt.subplots()
    fig.text(0.98, 0.5, "far too long a label to fit at the right edge")
    found = figures.problems(fig)
    assert any("outside the figure" in p and "far too long" in p for p in found)


def test_default_log_ticks_on_a_short_range_overprint_and_log_axis_fixes_them():
    fig, ax = plt.subplots(figsize=(2.5, 2))
    ax.plot([0.12, 0.95], [1, 2])
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # as plots.plot did
    assert any("x tick label" in p and "overlaps" in p for p in figures.problems(fig))
    fig, ax = plt.subplots(figsize=(2.5, 2))
    ax.plot([0.12, 0.95], [1, 2])
    figures.log_axis(ax, "x")
    assert figures.problems(fig) == []


def test_check_raises_with_every_problem_and_show_checks_when_asked(monkeypatch):
    fig, ax = plt.subplots()
    ax.set_title("crowded")
    ax.text(0.2, 0.2, "a")
    ax.text(0.2, 0.2, "b")
    with pytest.raises(figures.FigureCheckError, match="'a' in axes 0 overlaps label 'b'"):
        figures.check(fig)
    monkeypatch.setenv("EDGELAB_CHECK_FIGURES", "1")
    with pytest.raises(figures.FigureCheckError):
        figures.show(fig)
    monkeypatch.setenv("EDGELAB_CHECK_FIGURES", "0")
    figures.show(fig)  # unchecked: a learner's own figure is not policed


def test_accuracy_standard_error_is_binomial_and_refuses_no_images():
    assert figures.accuracy_se(0.9, 10_000) == pytest.approx(0.003)
    with pytest.raises(ValueError, match="at least one image"):
        figures.accuracy_se(0.9, 0)


def test_plot_points_pools_seeds_into_one_point_with_their_standard_error():
    points = plots.plot_points(RECORDS, "bytes")
    kd = next(p for p in points if p["label"].startswith("student-kd"))
    assert kd["label"] == "student-kd, 5 seeds" and len(kd["seeds"]) == 5
    assert kd["y"] == pytest.approx(0.9306)
    assert kd["se"] == pytest.approx(torch.tensor([0.0003 * k for k in range(5)]).std().item() / 5 ** 0.5)
    single = next(p for p in points if p["label"] == "teacher")
    assert single["se"] == pytest.approx(figures.accuracy_se(0.9373, 10000))
    assert len(points) == 7


def test_plot_draws_an_error_bar_on_every_point():
    fig, ax = plt.subplots()
    plots.plot(RECORDS, "bytes", ax=ax)
    bars = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(bars) == len(plots.plot_points(RECORDS, "bytes"))
    assert all(c.has_yerr for c in bars)


@pytest.mark.parametrize("records", [RECORDS[:3], RECORDS[:6], RECORDS], ids=["3", "6", "15"])
@pytest.mark.parametrize("draw", ["plot", "pareto_plot", "cost_figure", "cost_figure_pareto"])
def test_cost_plots_have_no_overlapping_or_escaping_text(draw, records):
    if draw.startswith("cost_figure"):
        fig = plots.cost_figure(records, pareto=draw.endswith("pareto"),
                                 title="a title that states what the figure shows")
    else:
        fig, ax = plt.subplots()
        getattr(plots, draw)(records, "latency_b1_ms", ax=ax)
    assert figures.problems(fig) == []


def _panel_figure(panel_factory):
    """The figure a panel draws for its first move (Panel closes it after showing)."""
    drawn = []
    real = figures.show

    def keep(fig=None):
        drawn.append(fig)
        assert figures.problems(fig) == []

    figures.show = keep
    try:
        panel_factory()
    finally:
        figures.show = real
    return drawn


def test_slider_figures_are_readable():
    torch.manual_seed(0)
    model = models.student(widths=(8, 16), blocks=1).eval()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    from edgelab import data, lowrank
    drawn = _panel_figure(lambda: widgets.prune_panel(model, x, y, latency_runs=2).set(rate=0.5))
    drawn += _panel_figure(lambda: widgets.lowrank_panel(model, x, y, energy=0.9, latency_runs=2,
                                                         svds=lowrank.decompose(model)).set(energy=0.5))
    t_logits, s_logits = torch.randn(2, 10), torch.randn(2, 10)
    drawn += _panel_figure(lambda: widgets.distill_panel(t_logits, s_logits, torch.tensor([0, 1]),
                                                         data.CLASSES))
    assert len(drawn) == 5
