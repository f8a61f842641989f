"""The policy for committed notebooks, and the tool that applies it.

Committed notebooks carry no outputs except those of cells marked ``# NBVAL_CHECK_OUTPUT``
(nbval compares exactly those), run on the ``python3`` kernel, hold no absolute paths and no
error outputs, and keep their cell tags. ``make clean-notebooks`` applies the policy, taking the
checked outputs from the executed copies in ``build/executed/``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

__all__ = ["CHECK_MARK", "ABSOLUTE_PATH", "is_checked", "problems", "clean"]

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:home|root|work|Users|tmp|usr/local)/[\w.-]+")


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def problems(nb, name: str = "notebook") -> list[str]:
    out = []
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != "python3":
        out.append(f"{name}: kernel is {kernel!r}, should be 'python3'")
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        out.append(f"{name}: no cell tagged 'parameters'")
    if not any(is_checked(c) for c in nb.cells):
        out.append(f"{name}: no cell marked {CHECK_MARK}: nbval needs one deterministic output "
                   "to compare (a parameter count, say)")
    for i, cell in enumerate(nb.cells):
        where = f"{name} cell {i}"
        if ABSOLUTE_PATH.search(cell.source):
            out.append(f"{where}: absolute path in the source")
        if cell.cell_type != "code":
            continue
        for o in cell.outputs:
            if o.output_type == "error":
                out.append(f"{where}: error output ({o.get('ename')})")
            text = o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
            if ABSOLUTE_PATH.search(text):
                out.append(f"{where}: absolute path in an output")
        if cell.outputs and not is_checked(cell):
            out.append(f"{where}: has outputs but is not marked {CHECK_MARK}")
        if is_checked(cell) and not cell.outputs:
            out.append(f"{where}: marked {CHECK_MARK} but has no stored output to compare")
    return out


def clean(nb, executed=None):
    """Strip outputs except checked cells'; take those from ``executed`` (same cells) if given."""
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata.pop("papermill", None)
    by_id = {c.get("id"): c for c in executed.cells} if executed is not None else {}
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if is_checked(cell):
            src = by_id.get(cell.get("id"))
            if src is not None:
                cell.outputs = [o for o in src.outputs if o.output_type != "error"]
                cell.execution_count = 1
        else:
            cell.outputs, cell.execution_count = [], None
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgelab.nbhygiene")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="report notebooks that break the policy")
    c.add_argument("paths", nargs="*", type=Path)
    f = sub.add_parser("clean", help="apply the policy in place")
    f.add_argument("paths", nargs="*", type=Path)
    f.add_argument("--executed", type=Path, help="folder of executed copies (build/executed)")
    args = p.parse_args(argv)
    paths = args.paths or sorted(Path("notebooks").glob("*.ipynb"))
    found = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if args.cmd == "clean":
            executed = None
            if args.executed and (args.executed / path.name).is_file():
                executed = nbformat.read(args.executed / path.name, as_version=4)
            nbformat.write(clean(nb, executed), path)
        else:
            found += problems(nb, str(path))
    for line in found:
        print(line, file=sys.stderr)
    if found:
        print("\nFix: `make clean-notebooks` (runs the notebooks in smoke mode, keeps only the "
              f"outputs of cells marked {CHECK_MARK}).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
