"""Regenerate the measured parts of docs/facilitator.md, so no number in it is typed by hand.

    python docs/update_facilitator.py            # print the blocks
    python docs/update_facilitator.py --write    # rewrite them in docs/facilitator.md

Durations and peak memory come from build/results.json, which only `make run` (defaults,
SMOKE=False) writes; a smoke run is refused. The exercise answers are read from
edgelab/check.py (each checker imports its reference solution)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "facilitator.md"
RESULTS = ROOT / "build" / "results.json"


def timings_block(res: dict) -> str:
    run = res["run"]
    if run.get("smoke"):
        raise SystemExit(f"{RESULTS} is from a smoke run; the guide quotes defaults: run `make run`")
    if run.get("only"):
        raise SystemExit(f"{RESULTS} is from a partial run (--only {' '.join(run['only'])}); the "
                         "guide quotes one full run: run `make run`")
    rows = ["| notebook | run time at defaults | peak RSS of the kernel | peak PSS of its process tree |",
            "|---|---:|---:|---:|"]
    for name, nb in sorted(res["notebooks"].items()):
        rows.append(f"| `{name}` | {nb['seconds'] / 60:.1f} min ({nb['seconds']:.0f} s) | "
                    f"{nb['peak_rss_mb']} MB | {nb.get('peak_tree_mb', '—')} MB |")
    total = sum(nb["seconds"] for nb in res["notebooks"].values())
    rows.append(f"| all | {total / 60:.1f} min | | |")
    commit = (run.get("commit") or "unknown")[:7]
    return (f"Measured by `make run` on {run['started']} (commit `{commit}`), {run['cpu']}, "
            f"{run['threads']} torch threads; Run All, unattended, without reading or exercises.\n\n"
            + "\n".join(rows))


# Suggested minutes for each "Your turn" (a plan for the schedule, not a measurement).
EXERCISE_MINUTES = {"magnitude_mask": 10, "magnitude_threshold": 5, "csr_bytes": 10,
                    "quantize_dequantize": 15, "fake_quant_ste": 10, "int_linear": 20,
                    "kmeans_quantize": 15, "fold_bn": 10, "kd_loss": 15, "factor_conv": 15,
                    "preprocess": 10, "choose_model": 10, "prune_pair": 15}


def _notebook_of(fn: str) -> str:
    """The notebook whose source calls ``check.<fn>(``."""
    hits = [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9]*.py"))
            if f"check.{fn}(" in p.read_text()]
    return ", ".join(f"`{h}`" for h in hits) or "-"


def answers_block() -> str:
    src = "\n".join(p.read_text() for p in sorted((ROOT / "edgelab").glob("check*.py")))
    rows = ["| exercise (`edgelab.check.…`) | notebook | suggested time | reference solution |",
            "|---|---|---:|---|"]
    for fn, body in re.findall(r"^def (\w+)\(fn.*?\n(.*?)(?=^def |\Z)", src, re.M | re.S):
        m = (re.search(r"from \.(\w+) import (\w+) as reference", body)
             or re.search(r"def reference\(.*?\n\s+return (\w+)\.(\w+)\(", body, re.S))
        where = (f"`edgelab/{m.group(1)}.py`: `{m.group(2)}`" if m else
                 f"`edgelab/check.py`: inside `{fn}`" if "reference" in body else None)
        if where:
            minutes = EXERCISE_MINUTES.get(fn)
            rows.append(f"| `{fn}` | {_notebook_of(fn)} | {f'{minutes} min' if minutes else '-'} "
                        f"| {where} |")
    return "\n".join(rows[:2] + sorted(rows[2:], key=lambda r: r.split("|")[2]))


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{GUIDE} lacks the markers {start} … {end}")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"rewrite the blocks in {GUIDE.name}")
    args = p.parse_args(argv)
    if not RESULTS.exists():
        raise SystemExit(f"{RESULTS} not found: run `make run` first")
    blocks = {"timings": timings_block(json.loads(RESULTS.read_text())), "answers": answers_block()}
    if not args.write:
        print("\n\n".join(blocks.values()))
        return 0
    text = GUIDE.read_text()
    for name, body in blocks.items():
        text = replace_block(text, name, body)
    GUIDE.write_text(text)
    print(f"updated {GUIDE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
