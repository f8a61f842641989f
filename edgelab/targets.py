"""What the workbook promises, checked on the assembled ``build/results.json``: the bars a
deployable model is held to (06 chooses against them on validation, the targets judge the shipped
model on test), 02's int8 bars, and each stated target as a function of the results."""
from __future__ import annotations

from .latency import same_architecture_problems
from .records import find

__all__ = ["SEED_CLAIMS", "BARS", "bar_text", "against", "meets", "choose", "INT8_SMALLER",
           "INT8_FASTER_B64", "INT8_MAX_DROP_PT", "int8_static_bars", "TARGETS", "check_targets",
           "targets_table"]

SEED_CLAIMS = ("1", "2", "3", "4", "5", "6", "7")   # the blog's claims (docs: DESIGN.md)


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


def _edge_bundles(res):
    """05_edge_runtimes: each runtime's int8 bundle against x86 on both emulated Pi cores."""
    recs = [r for r in res["records"] if r.get("notebook") == "05_edge_runtimes"
            and (r.get("bundle") or {}).get("arm64_by_cpu")]
    if not recs:
        return None
    parts, met = [], True
    for r in recs:
        checks = r["bundle"]["arm64_by_cpu"]
        ok = sum(bool(c.get("match")) for c in checks.values())
        met &= ok == len(checks)
        parts.append(f"{r['bundle']['runtime']} {ok}/{len(checks)}")
    return "cores equal x86: " + ", ".join(parts), met


TARGETS += [("05_edge_runtimes: every runtime's bundle equals x86 on both emulated Pi cores",
             _edge_bundles)]


def _same_arch(res):
    if res["run"].get("smoke", True) or not res["records"]:
        return None
    by_nb: dict[str, list] = {}
    for r in res["records"]:
        by_nb.setdefault(r.get("notebook"), []).append(r)
    found = [p for rs in by_nb.values() for p in same_architecture_problems(rs)]
    return ("all agree" if not found else f"{len(found)} pairs differ"), not found


TARGETS += [("identical architectures time alike in every table (within 10 %, or within "
             "their rounds' range)", _same_arch)]


def _seed_claims_shown(res):
    """The blog's claims that a notebook ran and recorded in this run (results.json: seed_claims)."""
    shown = sorted(res.get("seed_claims", {}))
    if not shown:
        return None
    missing = [k for k in SEED_CLAIMS if k not in shown]
    return (f"{len(shown)} of {len(SEED_CLAIMS)}"
            + (f" (missing {', '.join(missing)})" if missing else ""), not missing)


TARGETS += [("the blog's seven claims each shown by a cell that runs it", _seed_claims_shown)]
