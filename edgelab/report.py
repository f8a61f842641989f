"""Results of a run: per-notebook JSON, the assembled build/results.json, tables and plots."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .data import REPO_ROOT
from .models import atomic_write_bytes

__all__ = ["INT8_SMALLER", "INT8_FASTER_B64", "INT8_MAX_DROP_PT", "Table", "paired_delta", "SAME_ARCH_TOLERANCE", "same_architecture_problems",
           "check_same_architecture", "SEED_CLAIMS", "seed_claim", "BUILD", "RESULTS_DIR",
           "write_notebook_results", "find", "table", "plot", "plot_points", "cost_figure",
           "pareto_front", "pareto_plot",
           "BARS", "bar_text", "against", "meets", "choose", "TARGETS", "check_targets", "targets_table",
           "assemble", "int8_static_bars"]

BUILD = REPO_ROOT / "build"
RESULTS_DIR = BUILD / "results"


SEED_CLAIMS = ("1", "2", "3", "4", "5", "6", "7")   # the blog's claims (docs: DESIGN.md)


def seed_claim(ran: str, happened) -> dict:
    """One of the blog's claims as a notebook showed it: what ran, and what happened (an error's
    text or the measured numbers)."""
    if not ran or happened in (None, "", {}):
        raise ValueError("a seed claim needs what ran and what happened")
    return {"ran": ran, "happened": happened}


def write_notebook_results(notebook: str, records: list[dict], widgets: dict | None = None,
                           smoke: bool = False, results_dir: Path | None = None,
                           seed_claims: dict | None = None, verdicts: dict | None = None) -> Path:
    """Write ``build/results/<notebook>.json`` atomically; records get the notebook's name.

    ``seed_claims`` maps a claim's key ("1"-"7") to ``seed_claim(...)``; ``verdicts`` holds a
    notebook's statistical verdicts (a test, its p-values and interval) by name.
    ``$EDGELAB_RESULTS`` redirects the folder (the tests use it to keep build/ untouched)."""
    if not notebook:
        raise ValueError("write_notebook_results needs the notebook's name, e.g. '00_baseline'")
    unknown = set(seed_claims or ()) - set(SEED_CLAIMS)
    if unknown:
        raise ValueError(f"seed claims are keyed {', '.join(SEED_CLAIMS)}; got {sorted(unknown)}")
    check_same_architecture(records, smoke)
    records = [dict(r, notebook=notebook) for r in records]
    results_dir = results_dir or os.environ.get("EDGELAB_RESULTS") or RESULTS_DIR
    path = Path(results_dir) / f"{notebook}.json"
    payload = {"smoke": bool(smoke), "records": records, "widgets": widgets or {},
               "seed_claims": {k: dict(v, notebook=notebook) for k, v in (seed_claims or {}).items()},
               "verdicts": verdicts or {}}
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
    return path


def find(records: list[dict], name: str, runtime: str | None = None) -> dict:
    for r in records:
        if r["name"] == name and (runtime is None or r["runtime"] == runtime):
            return r
    raise KeyError(f"no record named {name!r}" + (f" in runtime {runtime!r}" if runtime else ""))


def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _fmt_count(n):
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def paired_delta(a: dict, b: dict) -> tuple[float, float | None]:
    """Accuracy of ``a`` minus ``b`` in points, and its standard error from the images on which
    the two disagree (paired, as McNemar's test): both saw the same images, so the images both
    get right or both get wrong carry no information about the difference. None when the records
    do not say which images they got right."""
    from .measure import unpack_mask

    delta = 100 * (a["accuracy"] - b["accuracy"])
    n = a.get("test_images")
    if not (a.get("correct") and b.get("correct")) or n != b.get("test_images"):
        return delta, None
    d = unpack_mask(a["correct"], n).astype(float) - unpack_mask(b["correct"], n)
    return delta, 100 * float(d.std() / math.sqrt(n))


def _fmt_delta(a: dict, b: dict) -> str:
    delta, se = paired_delta(a, b)
    return f"{delta:+.2f}" + (f" ±{se:.2f}" if se is not None else "")


class Table(str):
    """A records table: plain text wherever text is printed (papermill logs, terminals, ``str``),
    an HTML table in JupyterLab (right-aligned numbers, the baseline rows in bold), where 170
    columns of text would wrap into an unreadable block."""

    def __new__(cls, cols: list[str], rows: list[list[str]], baseline_rows: set[int],
                met: set[tuple[int, int]] = frozenset(), bars: dict | None = None):
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
        line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        text = "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])
        self = super().__new__(cls, text)
        self.cols, self.rows, self.baseline_rows = cols, rows, baseline_rows
        self.met, self.bars = set(met), dict(bars or {})
        return self

    def __repr__(self) -> str:
        return str(self)

    # The HTML folds each ratio (and gzip, and non-zeros) under the value it belongs to, so the
    # table fits JupyterLab's column at a 1280 px window (tests/test_browser.py checks it).
    _HTML = [("name", "name", ()), ("runtime", "runtime", ()), ("accuracy", "accuracy", ()),
             ("Δ pt ± SE", "Δ pt", ()), ("params (non-zero)", "params", ("nonzero",)),
             ("MACs", "MACs", ()), ("bytes (gzip, ×smaller)", "bytes", ("gzip", "×smaller")),
             ("batch-1 ms (×faster)", "b1 ms", ("×faster b1",)),
             ("batch-64 ms (×faster)", "b64 ms", ("×faster b64",))]

    def _repr_html_(self) -> str:
        from html import escape

        col = {c: i for i, c in enumerate(self.cols)}
        th = "".join(f'<th style="text-align:{"left" if i < 2 else "right"}">{escape(h)}</th>'
                     for i, (h, _, _) in enumerate(self._HTML))
        body = []
        for k, row in enumerate(self.rows):
            cells = []
            for i, (_, main, extra) in enumerate(self._HTML):
                value = row[col[main]]
                if main == "runtime" and value == "onnxruntime":
                    value = "ORT"
                subs = []
                for e in extra:
                    v = row[col[e]]
                    if v in ("-", None) or (e == "nonzero" and v == row[col["params"]]):
                        continue
                    text = f"{v}×" if e.startswith("×") else (f"gz {v}" if e == "gzip" else f"nz {v}")
                    hit = (k, col[e]) in self.met
                    subs.append(f'<span style="background:#cfe8d8">{escape(text)}</span>' if hit
                                else escape(text))
                sub = f"<br><small>{' · '.join(subs)}</small>" if subs else ""
                align = "left" if i < 2 else "right"
                wrap = "" if i == 0 else "; white-space:nowrap"   # long names break at hyphens
                cells.append(f'<td style="text-align:{align}{wrap}">'
                             f"{escape(str(value))}{sub}</td>")
            style = ' style="font-weight:bold"' if k in self.baseline_rows else ""
            body.append(f"<tr{style}>{''.join(cells)}</tr>")
        bars = ("; green: a ratio that meets this notebook's bar ("
                + ", ".join(f"{c} ≥ {v:g}" for c, v in self.bars.items()) + ")") if self.bars else ""
        return (f"<table style='font-size:0.85em'><thead><tr>{th}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>"
                "<p style='font-size:smaller'>Bold: the baseline each ratio is taken against (same "
                "runtime). Δ pt ± SE: accuracy difference and its paired standard error. ms ±: half "
                f"the range of interleaved rounds. ORT: ONNX Runtime{bars}.</p>")


def _fmt_latency(r: dict, b: int, fmt: str) -> str:
    """The median, and where it was measured interleaved, half the range of its round medians
    as a share of it."""
    med = r.get(f"latency_b{b}_ms")
    if not med:
        return "-"
    spread = r.get(f"latency_b{b}_spread_ms")
    return format(med, fmt) + (f" ±{50 * (spread[1] - spread[0]) / med:.0f}%" if spread else "")


SAME_ARCH_TOLERANCE = 0.10


def same_architecture_problems(records: list[dict], tolerance: float = SAME_ARCH_TOLERANCE) -> list[str]:
    """Records of one architecture (``measure.architecture_key``) in one runtime, with the same
    threads, whose latencies differ by more than ``tolerance`` at some batch size: a table would
    then suggest that training (distillation, a seed, zeroed weights) changed the speed."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("arch"):
            groups.setdefault((r["arch"], r["runtime"], r.get("threads")), []).append(r)
    found = []
    for rs in groups.values():
        if len(rs) < 2:
            continue
        for b in (1, 64):
            lat = [(r[f"latency_b{b}_ms"], r["name"]) for r in rs if r.get(f"latency_b{b}_ms")]
            if len(lat) < 2:
                continue
            (lo, lo_name), (hi, hi_name) = min(lat), max(lat)
            if hi > (1 + tolerance) * lo:
                found.append(f"{hi_name} ({hi:.3g} ms) and {lo_name} ({lo:.3g} ms) have the same "
                             f"architecture but differ by {100 * (hi / lo - 1):.0f} % at batch {b} "
                             f"(allowed {100 * tolerance:.0f} %): measure them together with "
                             "measure.remeasure_latency")
    return found


def check_same_architecture(records: list[dict], smoke: bool) -> None:
    """At the defaults, identical architectures must time alike (ValueError naming them); in
    smoke mode, where timings are a few repeats, a warning."""
    found = same_architecture_problems(records)
    if not found:
        return
    if smoke:
        import warnings
        warnings.warn("same-architecture latencies disagree (smoke mode: few repeats): "
                      + "; ".join(found), stacklevel=2)
    else:
        raise ValueError("same-architecture latencies disagree:\n  " + "\n  ".join(found))


def table(records: list[dict], baseline: str = "teacher", bars: dict[str, float] | None = None) -> Table:
    """A side-by-side table (text, and HTML in JupyterLab); ratios are against the baseline in
    the same runtime. ``bars`` maps a ratio column ("×smaller", "×faster b1", "×faster b64")
    to the ratio a notebook's bar asks for: the cells that meet it are highlighted."""
    unknown = set(bars or ()) - {"×smaller", "×faster b1", "×faster b64"}
    if unknown:
        raise ValueError(f"bars are for the ratio columns ×smaller, ×faster b1, ×faster b64; "
                         f"got {sorted(unknown)}")
    cols = ["name", "runtime", "accuracy", "Δ pt", "params", "nonzero", "MACs", "bytes", "gzip",
            "×smaller", "b1 ms", "×faster b1", "b64 ms", "×faster b64"]
    rows = []
    for r in records:
        try:
            base = find(records, baseline, r["runtime"])
        except KeyError:
            base = None

        def ratio(key, r=r, base=base):
            if base is None or not r.get(key) or not base.get(key):
                return "-"
            return f"{base[key] / r[key]:.2f}"
        rows.append([
            r["name"], r["runtime"], f"{100 * r['accuracy']:.2f}%",
            _fmt_delta(r, base) if base else "-",
            _fmt_count(r.get("params")), _fmt_count(r.get("nonzero_params")),
            _fmt_count(r.get("macs")), _fmt_bytes(r.get("bytes")), _fmt_bytes(r.get("gzip_bytes")),
            ratio("bytes"),
            _fmt_latency(r, 1, ".2f"), ratio("latency_b1_ms"),
            _fmt_latency(r, 64, ".1f"), ratio("latency_b64_ms"),
        ])
    met = set()
    for (col, need) in (bars or {}).items():
        j = cols.index(col)
        met |= {(i, j) for i, row in enumerate(rows) if row[j] != "-" and float(row[j]) >= need}
    return Table(cols, rows, {k for k, r in enumerate(records) if r["name"] == baseline}, met, bars or {})


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


# The workbook's stated targets, each a function of the assembled results that returns
# (measured, met) or None where the run has nothing to judge it by.
def _teacher_accuracy(res):
    rs = [r for r in res["records"] if r["name"] == "teacher" and r["test_images"] == 10000]
    if not rs:
        return None
    acc = min(r["accuracy"] for r in rs)
    return f"{100 * acc:.2f} %", acc >= 0.930


def _slowest_notebook(res):
    nbs = res.get("notebooks") or {}
    if not nbs:
        return None
    name, meta = max(nbs.items(), key=lambda kv: kv[1]["seconds"])
    limit = 60 if res["run"]["smoke"] else 300
    return f"{meta['seconds']:.0f} s ({name}; limit {limit} s)", meta["seconds"] <= limit


def _peak_memory(res):
    nbs = res.get("notebooks") or {}
    peaks = {k: v["peak_rss_mb"] for k, v in nbs.items() if v.get("peak_rss_mb")}
    if not peaks:
        return None
    name = max(peaks, key=peaks.get)
    return f"{peaks[name]:.0f} MB ({name})", peaks[name] <= 1500


def _widget_response(res):
    ws = res.get("widgets") or {}
    if not ws:
        return None
    name = max(ws, key=lambda k: ws[k]["median_s"])
    return f"{ws[name]['median_s']:.2f} s ({name})", ws[name]["median_s"] <= 1.0


def _pair(res, notebook, name, runtime="torch"):
    """The teacher and a model of one notebook, both measured there on the full test set."""
    rs = [r for r in res["records"] if r["notebook"] == notebook and r["runtime"] == runtime]
    try:
        t, m = find(rs, "teacher"), find(rs, name)
    except KeyError:
        return None
    return (t, m) if t["test_images"] == m["test_images"] == 10000 else None


def _structured50_speed(res):
    pair = _pair(res, "01_pruning", "structured-50-finetuned")
    if pair is None:
        return None
    ratio = pair[0]["latency_b1_ms"] / pair[1]["latency_b1_ms"]
    return f"{ratio:.2f}x", ratio >= 2.0


def _accuracy_gap(notebook, name, max_pt):
    def target(res):
        pair = _pair(res, notebook, name)
        if pair is None:
            return None
        gap = 100 * (pair[0]["accuracy"] - pair[1]["accuracy"])
        return f"{gap:+.2f} pt below the teacher", gap <= max_pt
    return target


def _student_int8(res):
    """03: the best distilled student (chosen on validation) in int8 against the fp32 teacher,
    both on the full test set."""
    rs = [r for r in res["records"] if r["notebook"] == "03_distillation"
          and r["test_images"] == 10000]
    teachers = [r for r in rs if r["name"] == "teacher"]
    int8 = [r for r in rs if {"student", "int8", "kd"} <= set(r["tags"])]
    if not teachers or not int8:
        return None
    t, m = teachers[0], int8[0]
    ratio, gap = t["bytes"] / m["bytes"], 100 * (t["accuracy"] - m["accuracy"])
    return f"{ratio:.0f}x smaller, {gap:+.2f} pt below", ratio >= 100 and gap <= 3.0


# The bars a deployable model is held to, defined once: 06 chooses against them on validation
# and TARGETS checks the shipped model against them on test. Ratios are against the fp32
# teacher in the same runtime and run; "points" is the most accuracy it may lose.
BARS = {
    "frontier": {"smaller": 100, "faster": 15, "points": 0.3},     # issue 17
    "deployable": {"smaller": 15, "faster": 5, "points": 1.0},     # the first version's bar
}


def bar_text(bar: str) -> str:
    b = BARS[bar]
    return (f"≥ {b['smaller']}x smaller, ≥ {b['faster']}x faster (ORT, batch 1), "
            f"within {b['points']} pt")


def against(r: dict, teacher: dict, split: str = "test") -> dict:
    """``r`` against the teacher: times smaller (bytes), times faster (batch 1) and the points
    of accuracy lost on ``split`` ("test" or "val")."""
    key = "accuracy" if split == "test" else "val_accuracy"
    return {"smaller": teacher["bytes"] / r["bytes"],
            "faster": teacher["latency_b1_ms"] / r["latency_b1_ms"],
            "points": 100 * (teacher[key] - r[key])}


def meets(r: dict, teacher: dict, bar: str, split: str = "test") -> bool:
    if bar not in BARS:
        raise ValueError(f"bar must be one of {sorted(BARS)}, got {bar!r}")
    a, b = against(r, teacher, split), BARS[bar]
    return a["smaller"] >= b["smaller"] and a["faster"] >= b["faster"] and a["points"] <= b["points"]


def choose(records: list[dict], teacher: dict, bar: str) -> tuple[dict | None, str]:
    """The model to ship: of the records (the teacher aside) that meet ``bar`` on the
    *validation* split, the most accurate on validation, the faster of a tie. Returns
    (record, why), or (None, why none) when no record meets the bar: the test split never
    decides."""
    meeting = [r for r in records if r is not teacher and meets(r, teacher, bar, "val")]
    if not meeting:
        return None, f"no model meets the {bar} bar ({bar_text(bar)}) on validation"
    pick = max(meeting, key=lambda r: (r["val_accuracy"], -r["latency_b1_ms"]))
    return pick, (f"it meets the {bar} bar on validation and is the most accurate there of the "
                  f"{len(meeting)} model(s) that do")


def _deployable_against(bar: str):
    def check(res):
        """06: the model tagged ``deployable`` against the fp32 teacher, both in ONNX Runtime."""
        rs = [r for r in res["records"] if r["notebook"] == "06_pipeline"
              and r["runtime"] == "onnxruntime" and r["test_images"] == 10000]
        teachers = [r for r in rs if r["name"] == "teacher"]
        picks = [r for r in rs if "deployable" in r["tags"]]
        if not teachers or not picks:
            return None
        a = against(picks[0], teachers[0])
        return (f"{picks[0]['name']}: {a['smaller']:.1f}x smaller, {a['faster']:.1f}x faster, "
                f"{a['points']:.2f} pt below", meets(picks[0], teachers[0], bar))
    return check


def _lowrank(res):
    """04: the fine-tuned low-rank teacher against the teacher, both on the full test set."""
    pair = _pair(res, "04_low_rank", "lowrank-55-finetuned")
    if pair is None:
        return None
    fewer = pair[0]["params"] / pair[1]["params"]
    gap = 100 * (pair[0]["accuracy"] - pair[1]["accuracy"])
    return f"{fewer:.2f}x fewer, {gap:+.2f} pt below", fewer >= 2.0 and gap <= 1.0


TARGETS = [
    ("teacher ≥ 93.0 % on the full 10k test set", _teacher_accuracy),
    ("each notebook ≤ 5 min at defaults (≤ 1 min smoke)", _slowest_notebook),
    ("peak memory ≤ 1.5 GB per notebook", _peak_memory),
    ("slider median response ≤ 1 s per move", _widget_response),
    ("01: 50 % structured + fine-tune ≥ 2x faster at batch 1", _structured50_speed),
    ("01: 50 % structured + fine-tune within 0.5 pt",
     _accuracy_gap("01_pruning", "structured-50-finetuned", 0.5)),
    ("01: 50 % unstructured, masked fine-tune within 0.3 pt",
     _accuracy_gap("01_pruning", "unstructured-50-finetuned", 0.3)),
    ("03: best student, int8, ≥ 100x smaller than the teacher within 3 pt", _student_int8),
    ("04: low-rank teacher ≥ 2x fewer parameters within 1 pt", _lowrank),
    ("06: deployable model " + bar_text("frontier"), _deployable_against("frontier")),
    ("06: deployable model " + bar_text("deployable"), _deployable_against("deployable")),
]


def check_targets(res: dict) -> list[tuple[str, str, bool | None]]:
    out = []
    for desc, fn in TARGETS:
        got = fn(res)
        out.append((desc, "not measured in this run", None) if got is None else (desc, *got))
    return out


def targets_table(res: dict) -> str:
    rows = check_targets(res)
    w = max(len(d) for d, _, _ in rows)
    mark = {True: "met", False: "MISSED", None: "-"}
    return "\n".join(f"{d.ljust(w)}  {m:<40}  {mark[ok]}" for d, m, ok in rows)


def assemble(run: dict, notebooks: dict, results_dir: Path | None = None,
             out: Path | None = None) -> dict:
    """Merge every ``build/results/<notebook>.json`` into one ``build/results.json``."""
    results_dir = Path(results_dir or RESULTS_DIR)
    res = {"run": run, "notebooks": notebooks, "widgets": {}, "records": [], "seed_claims": {},
           "verdicts": {}}
    for path in sorted(results_dir.glob("*.json")):
        part = json.loads(path.read_text())
        res["records"] += part["records"]
        res["seed_claims"].update(part.get("seed_claims", {}))
        for k, v in part.get("verdicts", {}).items():
            res["verdicts"][f"{path.stem}.{k}"] = v
        for k, v in part.get("widgets", {}).items():
            res["widgets"][f"{path.stem}.{k}"] = v
    res["seed_claims"] = dict(sorted(res["seed_claims"].items()))
    atomic_write_bytes(Path(out or BUILD / "results.json"),
                       (json.dumps(res, indent=2, default=_json_default) + "\n").encode())
    return res


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


# --------------------------------------------------------------------------------------------
# 02_quantization_flows: the best static int8 model against the fp32 teacher, runtime by runtime
# --------------------------------------------------------------------------------------------

INT8_SMALLER, INT8_FASTER_B64, INT8_MAX_DROP_PT = 3.5, 1.5, 0.5


def int8_static_bars(records: list[dict], notebook: str | None = None) -> dict[str, dict]:
    """For each runtime with an fp32 teacher and static int8 models: the best of them (within
    the accuracy margin if any is, then fastest at batch 64), its ratios and whether it meets
    the bars (≥ 3.5x smaller, ≥ 1.5x faster at batch 64, within 0.5 pt)."""
    out = {}
    recs = [r for r in records if notebook is None or r.get("notebook") == notebook]
    for runtime in sorted({r["runtime"] for r in recs}):
        try:
            base = find(recs, "teacher", runtime)
        except KeyError:
            continue
        rows = []
        for r in recs:
            tags = set(r.get("tags", []))
            if r["runtime"] != runtime or not {"int8", "static"} <= tags:
                continue
            if not r.get("latency_b64_ms") or not r.get("bytes"):
                continue
            smaller = base["bytes"] / r["bytes"]
            faster = base["latency_b64_ms"] / r["latency_b64_ms"]
            delta = 100 * (r["accuracy"] - base["accuracy"])
            met = smaller >= INT8_SMALLER and faster >= INT8_FASTER_B64 and delta >= -INT8_MAX_DROP_PT
            rows.append({"name": r["name"], "smaller": smaller, "faster_b64": faster,
                         "delta_pt": delta, "met": met})
        if rows:
            out[runtime] = max(rows, key=lambda b: (b["met"], b["delta_pt"] >= -INT8_MAX_DROP_PT,
                                                     b["faster_b64"]))
    return out


def _int8_bars(runtime):
    def target(res):
        if res["run"].get("smoke"):
            return None
        bars = int8_static_bars(res["records"], "02_quantization_flows")
        if runtime not in bars:
            return None
        b = bars[runtime]
        return (f"{b['name']}: {b['smaller']:.2f}x, {b['faster_b64']:.2f}x, {b['delta_pt']:+.2f} pt",
                b["met"])
    return target


TARGETS += [
    ("int8 static (torch) ≥ 3.5x smaller, ≥ 1.5x faster b64, within 0.5 pt", _int8_bars("torch")),
    ("int8 static (ONNX Runtime) ≥ 3.5x smaller, ≥ 1.5x faster b64, within 0.5 pt",
     _int8_bars("onnxruntime")),
]


def _arm64_match(qemu_cpu: str = "cortex-a72"):
    def check(res):
        """05: the Pi bundle's predictions on an emulated Pi core against x86's."""
        checks = [(r["bundle"].get("arm64_by_cpu") or {"cortex-a72": r["bundle"]["arm64"]})
                  for r in res["records"] if r.get("notebook") == "05_deploy_pi"
                  and (r.get("bundle") or {}).get("arm64")]
        if not checks or qemu_cpu not in checks[0]:
            return None
        a = checks[0][qemu_cpu]
        return f"{a['images'] - a['mismatches']} of {a['images']} images equal", a["match"]
    return check


TARGETS += [("05: Pi bundle on an emulated Cortex-A72 equals x86 on every checked image",
             _arm64_match("cortex-a72")),
            ("05: Pi bundle on an emulated Cortex-A76 (Pi 5) equals x86 on every checked image",
             _arm64_match("cortex-a76"))]


def _same_arch(res):
    if res["run"].get("smoke", True) or not res["records"]:
        return None
    by_nb: dict[str, list] = {}
    for r in res["records"]:
        by_nb.setdefault(r.get("notebook"), []).append(r)
    found = [p for rs in by_nb.values() for p in same_architecture_problems(rs)]
    return ("all agree" if not found else f"{len(found)} pairs differ"), not found


TARGETS += [("identical architectures time within 10 % of each other in every table", _same_arch)]


def _seed_claims_shown(res):
    """The blog's claims that a notebook ran and recorded in this run (results.json: seed_claims)."""
    shown = sorted(res.get("seed_claims", {}))
    if not shown:
        return None
    missing = [k for k in SEED_CLAIMS if k not in shown]
    return (f"{len(shown)} of {len(SEED_CLAIMS)}"
            + (f" (missing {', '.join(missing)})" if missing else ""), not missing)


TARGETS += [("the blog's seven claims each shown by a cell that runs it", _seed_claims_shown)]
