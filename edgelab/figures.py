"""One look for every figure, and a check that reads a drawn figure's text boxes.

The check is what keeps the figures readable: two labels that overlap, or a label that leaves the
figure (or, for a point's label, its axes), is an error that names both texts. `make test` and
`python -m edgelab.workbook run` turn it on for every figure a notebook shows (EDGELAB_CHECK_FIGURES=1);
tests/test_figures.py runs it on each figure-drawing function of edgelab."""
from __future__ import annotations

import math
import os

__all__ = ["PALETTE", "MARKERS", "WIDTH", "style", "show", "problems", "check", "FigureCheckError",
           "checking", "log_axis", "label_points", "collide", "accuracy_se", "accuracy_errorbar"]

# Okabe & Ito's colour-blind-safe palette (https://jfly.uni-koeln.de/color/), yellow last: it is
# the one that is hard to see on white.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
# Inches at 100 dpi: 820 px, plus the few px a tight bounding box adds, fits JupyterLab's
# notebook column at a 1280 px window with the file browser open, so no figure is scaled down
# (tests/test_browser.py checks the page).
WIDTH = 8.2


def style() -> None:
    """Apply the workbook's look to every later figure: palette, readable fonts, a width that fits."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update({
        "axes.prop_cycle": cycler(color=PALETTE),
        "figure.figsize": (WIDTH, 3.6), "figure.dpi": 100, "savefig.dpi": 100,
        "figure.constrained_layout.use": True,
        "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
        "ytick.labelsize": 10, "legend.fontsize": 9.5, "figure.titlesize": 13,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "lines.markersize": 6, "errorbar.capsize": 3,
    })


def checking() -> str:
    """How `show` checks figures: "1" raises (`make test`, the workbook runner), "warn" prints
    the problems to stderr and goes on, anything else skips the check."""
    mode = os.environ.get("EDGELAB_CHECK_FIGURES", "0")
    return mode if mode in ("1", "warn") else ""


class FigureCheckError(AssertionError):
    """A figure has overlapping text or text outside its bounds."""


def _describe(kind: str, text, ax_index: int | None) -> str:
    where = f" in axes {ax_index}" if ax_index is not None else ""
    return f"{kind} {text.get_text()!r}{where}"


def _ticklabels(axis):
    """The tick labels this axis draws: only ticks inside the view carry a drawn label."""
    ticks = axis._update_ticks()  # the same list Axis.draw uses
    out = []
    for t in ticks:
        for lab in (t.label1, t.label2):
            if lab.get_visible() and lab.get_text().strip():
                out.append(lab)
    return out


def _texts(fig):
    """(description, Text, the axes a point label must stay in or None) for every drawn text."""
    found = []
    for text in [fig._suptitle, getattr(fig, "_supxlabel", None), getattr(fig, "_supylabel", None),
                 *fig.texts]:
        if text is not None:
            found.append(("figure text", text, None, None))
    for legend in fig.legends:
        found += [("legend entry", t, None, None) for t in legend.get_texts()]
        found.append(("legend title", legend.get_title(), None, None))
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        found += [("title", t, i, None) for t in (ax.title, ax._left_title, ax._right_title)]
        found += [("x label", ax.xaxis.label, i, None), ("y label", ax.yaxis.label, i, None),
                  ("x offset", ax.xaxis.offsetText, i, None), ("y offset", ax.yaxis.offsetText, i, None)]
        found += [("x tick label", t, i, None) for t in _ticklabels(ax.xaxis)]
        found += [("y tick label", t, i, None) for t in _ticklabels(ax.yaxis)]
        found += [("label", t, i, ax) for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            found += [("legend entry", t, i, None) for t in legend.get_texts()]
            found.append(("legend title", legend.get_title(), i, None))
    seen, out = set(), []
    for kind, t, i, ax in found:   # the suptitle is also one of fig.texts
        if id(t) not in seen and t.get_visible() and t.get_text().strip():
            seen.add(id(t))
            out.append((_describe(kind, t, i), t, ax))
    return out


def problems(fig, tolerance_px: float = 1.0) -> list[str]:
    """Every pair of overlapping text boxes and every text box outside the figure (a point's
    label: outside its axes), as sentences that name the texts. Empty when the figure is clean."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for name, text, ax in _texts(fig):
        bb = text.get_window_extent(renderer)
        if bb.width > 0 and bb.height > 0:
            boxes.append((name, bb, ax))
    found = []
    W, H = fig.bbox.width, fig.bbox.height
    for name, bb, ax in boxes:
        if bb.x0 < -tolerance_px or bb.y0 < -tolerance_px or bb.x1 > W + tolerance_px \
                or bb.y1 > H + tolerance_px:
            found.append(f"{name} lies outside the figure ({bb.x0:.0f}..{bb.x1:.0f} x "
                         f"{bb.y0:.0f}..{bb.y1:.0f} px in a {W:.0f} x {H:.0f} px figure)")
        elif ax is not None:
            ab = ax.get_window_extent(renderer)
            if bb.x0 < ab.x0 - tolerance_px or bb.x1 > ab.x1 + tolerance_px \
                    or bb.y0 < ab.y0 - tolerance_px or bb.y1 > ab.y1 + tolerance_px:
                found.append(f"{name} leaves its axes")
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (a, ba, _), (b, bb, _) = boxes[i], boxes[j]
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if w > tolerance_px and h > tolerance_px:
                found.append(f"{a} overlaps {b} ({w:.0f} x {h:.0f} px)")
    return found


def check(fig) -> None:
    """Raise FigureCheckError naming every collision; returns quietly for a clean figure."""
    found = problems(fig)
    if found:
        title = next((ax.get_title() for ax in fig.axes if ax.get_title()), "untitled")
        raise FigureCheckError(f"figure {title!r} is hard to read:\n  " + "\n  ".join(found))


def show(fig=None) -> None:
    """plt.show, after the check when `checking()` (a failing figure stops the run there)."""
    import matplotlib.pyplot as plt

    mode = checking()
    for f in ([fig] if fig is not None else [plt.figure(n) for n in plt.get_fignums()]) if mode else []:
        if mode == "1":
            check(f)
        else:
            import sys
            for p in problems(f):
                print(f"figure check: {p}", file=sys.stderr)
    plt.show()


def log_axis(ax, which: str = "x", fmt=None) -> None:
    """A log scale that labels plain major ticks only (1, 10, 100 or 0.1, 1 ...): matplotlib's
    default also labels minor ticks on short ranges, which print on top of each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    decades = math.log10(hi / lo) if lo > 0 else 3
    # Under about one decade the powers of ten alone leave too few ticks: add 2x and 5x.
    subs = (1.0,) if decades > 3.5 else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    fmt = fmt or (lambda v: f"{v:g}")
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


def label_points(ax, xs, ys, labels, **text_kw) -> list:
    """Label points so that no two labels overlap and none leaves the axes (adjustText moves them
    apart and draws a thin leader line). Returns the Text artists."""
    from adjustText import adjust_text

    texts = [ax.text(x, y, s, fontsize=text_kw.pop("fontsize", 9.5), **text_kw)
             for x, y, s in zip(xs, ys, labels)]
    if texts:
        ax.figure.canvas.draw()
        adjust_text(texts, x=list(xs), y=list(ys), ax=ax, ensure_inside_axes=True,
                    expand=(1.15, 1.4), arrowprops=dict(arrowstyle="-", color="0.5", lw=0.6))
    return texts


def collide(texts) -> bool:
    """Whether any two of these Text artists overlap, or one leaves its axes."""
    if not texts:
        return False
    fig = texts[0].figure
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in texts]
    axb = texts[0].axes.get_window_extent(r)
    if any(b.x0 < axb.x0 - 1 or b.x1 > axb.x1 + 1 or b.y0 < axb.y0 - 1 or b.y1 > axb.y1 + 1
           for b in boxes):
        return True
    return any(min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


def accuracy_se(accuracy: float, n: int) -> float:
    """The binomial standard error of an accuracy measured on n images (a fraction)."""
    if n <= 0:
        raise ValueError(f"an accuracy needs at least one image, got n={n}")
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def accuracy_errorbar(ax, xs, accuracies, n, **kw):
    """Accuracy points in percent with ±1 standard error over the n images each was measured on."""
    ns = n if isinstance(n, (list, tuple)) else [n] * len(accuracies)
    ys = [100 * a for a in accuracies]
    errs = [100 * accuracy_se(a, k) for a, k in zip(accuracies, ns)]
    kw.setdefault("marker", "o")
    kw.setdefault("capsize", 3)
    return ax.errorbar(xs, ys, yerr=errs, **kw)
