"""Accuracy against a cost (bytes, latency, MACs), one point a model with ±1 standard error, the
seeds of a recipe pooled, and the Pareto frontier through the models worth choosing. The look
(palette, markers, width, the label check) is ``figures``'."""
from __future__ import annotations

import math
import re

__all__ = ["plot_points", "plot", "cost_figure", "pareto_front", "pareto_plot"]

_SEED = re.compile(r"^(?P<base>.+)-s\d+(?P<rest>-.+)?$")
_COST_AXES = {"bytes": ("bytes as deployed", "MB", 1e6), "gzip_bytes": ("bytes gzipped", "MB", 1e6),
              "latency_b1_ms": ("batch-1 latency", "ms", 1), "latency_b64_ms": ("batch-64 latency", "ms", 1),
              "macs": ("multiply-accumulates", "M", 1e6), "params": ("parameters", "M", 1e6)}


def _label(r: dict) -> str:
    return r["name"] if r["runtime"] == "torch" else f"{r['name']} ({r['runtime']})"


def plot_points(records: list[dict], x: str, y: str = "accuracy") -> list[dict]:
    """The points a cost plot draws: one per model, the seeds of a recipe (``<name>-s<k>``) pooled
    into one point at their mean with the standard error over seeds; a single model's accuracy
    carries its binomial standard error over the test images. Only records measured on the most
    test images are drawn, so every point is comparable."""
    from .figures import accuracy_se

    shown = [r for r in records if r.get(x) is not None and r.get(y) is not None]
    if not shown:
        raise ValueError(f"no record has both {x!r} and {y!r} to plot")
    most = max(r["test_images"] for r in shown)
    groups: dict[tuple, list[dict]] = {}
    for r in shown:
        if r["test_images"] != most:
            continue
        m = _SEED.match(r["name"])
        key = (m["base"] + (m["rest"] or ""), r["runtime"]) if m else (r["name"], r["runtime"])
        groups.setdefault(key, []).append(r)
    points = []
    for (name, runtime), rs in groups.items():
        if len(rs) == 1 or not _SEED.match(rs[0]["name"]):
            for r in rs:
                se = accuracy_se(r[y], most) if y == "accuracy" else 0.0
                points.append({"label": _label(r), "x": r[x], "y": r[y], "se": se, "seeds": [],
                               "n": most})
            continue
        ys = [r[y] for r in rs]
        mean = sum(ys) / len(ys)
        sd = math.sqrt(sum((v - mean) ** 2 for v in ys) / (len(ys) - 1))
        label = _label({"name": name, "runtime": runtime}) + f", {len(rs)} seeds"
        points.append({"label": label, "x": sum(r[x] for r in rs) / len(rs), "y": mean,
                       "se": sd / math.sqrt(len(rs)), "seeds": [(r[x], r[y]) for r in rs], "n": most})
    return points


def _cost_axis(ax, x: str, values) -> None:
    from .figures import log_axis

    what, unit, scale = _COST_AXES.get(x, (x.replace("_", " "), "", 1))
    lo, hi = min(values), max(values)
    if lo > 0 and hi / lo > 3:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.6, hi * 1.6)
        log_axis(ax, "x", fmt=lambda v, s=scale: f"{v / s:g}")
    else:
        from matplotlib.ticker import FuncFormatter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _, s=scale: f"{v / s:g}"))
    ax.set_xlabel(f"{what} ({unit}, log scale)" if ax.get_xscale() == "log" and unit else
                  f"{what} ({unit})" if unit else what)


def plot(records: list[dict], x: str = "bytes", y: str = "accuracy", ax=None, labels: str = "auto",
         style_of=None):
    """The standard picture: accuracy against a cost (bytes, latency, MACs), one point a model,
    with ±1 standard error (see ``plot_points``). ``labels``: "auto" labels up to six points
    beside them (placed apart by adjustText) and uses a legend beyond that; "legend"; "none".
    Returns the axes."""
    import matplotlib.pyplot as plt

    from .figures import MARKERS, PALETTE, collide, label_points

    ax = ax or plt.subplots()[1]
    points = plot_points(records, x, y)
    scale = 100 if y == "accuracy" else 1
    for i, p in enumerate(points):
        color, marker = style_of(p["label"]) if style_of else (PALETTE[i % 7], MARKERS[i // 7 % len(MARKERS)])
        if p["seeds"]:
            ax.scatter([sx for sx, _ in p["seeds"]], [scale * sy for _, sy in p["seeds"]], s=14,
                       color=color, alpha=0.35, zorder=2)
        ax.errorbar(p["x"], scale * p["y"], yerr=scale * p["se"], marker=marker, color=color, ms=7,
                    capsize=3, ls="none", zorder=3, label=p["label"])
    _cost_axis(ax, x, [p["x"] for p in points])
    n = points[0]["n"]
    ax.set_ylabel(f"test accuracy (%)\n{n:,} images, ±1 SE" if y == "accuracy" else y)
    ax.margins(y=0.15)
    mode = labels if labels != "auto" else ("text" if len(points) <= 6 else "legend")
    if mode == "text":
        texts = label_points(ax, [p["x"] for p in points], [scale * p["y"] for p in points],
                             [p["label"] for p in points])
        if collide(texts):   # adjustText could not part them: a legend always reads
            for t in texts:
                t.remove()
            for patch in list(ax.patches):   # its leader lines
                patch.remove()
            mode = "legend"
    if mode == "legend":
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    return ax


def cost_figure(records: list[dict], costs=("bytes", "latency_b1_ms"), title: str | None = None,
                pareto: bool = False, height: float = 4.2):
    """Accuracy against each cost in side-by-side panels, every model drawn in the same colour and
    marker in both, one legend under the panels. ``pareto`` draws each panel's frontier.
    Returns the figure."""
    import matplotlib.pyplot as plt

    from .figures import MARKERS, PALETTE, WIDTH

    fig, axes = plt.subplots(1, len(costs), figsize=(WIDTH, height), squeeze=False)
    labels = []
    for x in costs:
        for p in plot_points(records, x):
            if p["label"] not in labels:
                labels.append(p["label"])
    style_of = lambda lab: (PALETTE[labels.index(lab) % 7],  # noqa: E731  (no yellow: too pale)
                            MARKERS[labels.index(lab) // 7 % len(MARKERS)])
    for ax, x in zip(axes[0], costs):
        plot(records, x, ax=ax, labels="none", style_of=style_of)
        if pareto:
            _frontier(ax, records, x)
        if ax is not axes[0][0]:
            ax.set_ylabel("")
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    runtimes = {r["runtime"] for r in records}
    if len(runtimes) == 1 and "torch" not in runtimes:   # one runtime: say it once, not per entry
        names = [n.replace(f" ({next(iter(runtimes))})", "") for n in names]
    longest = max(len(n) for n in names)
    fig.legend(handles, names, loc="outside lower center", frameon=False,
               ncols=min(3 if longest <= 26 else 2, len(names)))
    if title:
        fig.suptitle(title)
    return fig


def pareto_front(records: list[dict], cost: str, y: str = "accuracy") -> list[dict]:
    """The records no other record beats on both ``cost`` (lower is better) and ``y`` (higher
    is better), cheapest first."""
    pts = sorted((r for r in records if r.get(cost) is not None), key=lambda r: (r[cost], -r[y]))
    front, best = [], float("-inf")
    for r in pts:
        if r[y] > best:
            front.append(r)
            best = r[y]
    return front


def _frontier(ax, records, x, y="accuracy"):
    most = max(r["test_images"] for r in records if r.get(x) is not None)
    front = pareto_front([r for r in records if r["test_images"] == most], x, y)
    scale = 100 if y == "accuracy" else 1
    ax.step([r[x] for r in front], [scale * r[y] for r in front], where="post", color="0.3",
            lw=1, ls="--", label="Pareto frontier", zorder=1)


def pareto_plot(records: list[dict], x: str = "bytes", y: str = "accuracy", ax=None):
    """``plot`` with the Pareto frontier drawn through the models worth choosing."""
    ax = plot(records, x, y, ax, labels="legend")
    _frontier(ax, records, x, y)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    return ax
