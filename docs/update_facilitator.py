"""Regenerate the generated parts of docs/facilitator.md, so no number in it is typed by hand.

    python docs/update_facilitator.py                         # print the blocks
    python docs/update_facilitator.py --write                 # rewrite them in docs/facilitator.md
    python docs/update_facilitator.py --only answers --write  # the exercise table alone

Durations and peak memory come from build/results.json, which only `make run` (defaults,
SMOKE=False) writes; a smoke run is refused. The exercise table is read from the registry
``edgelab.check.EXERCISES`` (notebook, suggested time, hint, reference solution), so it needs no
run."""
from __future__ import annotations

import argparse
import json
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


def _position(exercise) -> tuple[str, int]:
    """Where a facilitator meets the exercise: its notebook, then its place in that notebook."""
    src = (ROOT / "notebooks" / f"{exercise.notebook}.py").read_text()
    at = src.find(f"check.{exercise.name}(")
    return exercise.notebook, at if at >= 0 else len(src)


def answers_block() -> str:
    sys.path.insert(0, str(ROOT))
    from edgelab import check

    rows = ["| exercise (`edgelab.check.…`) | notebook | suggested time | the learner writes "
            "| if a learner is stuck | reference solution |",
            "|---|---|---:|---|---|---|"]
    for ex in sorted(check.EXERCISES.values(), key=_position):
        path, name = ex.where.split(": ")
        cells = [f"`{ex.name}`", f"`{ex.notebook}`", f"{ex.minutes} min", f"`{ex.signature}`",
                 ex.hint, f"`{path}`: `{name}`"]
        rows.append("| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |")  # GFM
    return "\n".join(rows)


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{GUIDE} lacks the markers {start} … {end}")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"rewrite the blocks in {GUIDE.name}")
    p.add_argument("--only", choices=["timings", "answers"],
                   help="one block: `answers` (the exercise table) needs no build/results.json")
    args = p.parse_args(argv)
    blocks = {}
    if args.only in (None, "timings"):
        if not RESULTS.exists():
            raise SystemExit(f"{RESULTS} not found: run `make run` first (or `--only answers`)")
        blocks["timings"] = timings_block(json.loads(RESULTS.read_text()))
    if args.only in (None, "answers"):
        blocks["answers"] = answers_block()
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
