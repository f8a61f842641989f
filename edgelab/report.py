"""Results of a run: each notebook's ``build/results/<notebook>.json``, written atomically, and
the one ``build/results.json`` that ``make run`` assembles from them.

Tables (``tables``), cost and Pareto plots (``plots``) and the bars and targets (``targets``) live
in their own modules.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import paths
from .latency import check_same_architecture
from .paths import atomic_write_bytes
from .records import as_dict
from .targets import SEED_CLAIMS

__all__ = ["seed_claim", "write_notebook_results", "assemble"]


def seed_claim(ran: str, happened) -> dict:
    """One of the blog's claims as a notebook showed it: what ran, and what happened (an error's
    text or the measured numbers)."""
    if not ran or happened in (None, "", {}):
        raise ValueError("a seed claim needs what ran and what happened")
    return {"ran": ran, "happened": happened}


def write_notebook_results(notebook: str, records: list, widgets: dict | None = None,
                           smoke: bool = False, results_dir: Path | None = None,
                           seed_claims: dict | None = None, verdicts: dict | None = None) -> Path:
    """Write ``build/results/<notebook>.json`` atomically; records (``Record``s, or plain dicts
    of the same keys) get the notebook's name.

    ``seed_claims`` maps a claim's key ("1"-"7") to ``seed_claim(...)``; ``verdicts`` holds a
    notebook's statistical verdicts (a test, its p-values and interval) by name.
    ``$EDGELAB_RESULTS`` redirects the folder (``paths.results_dir()``; the tests use it to keep
    build/ untouched)."""
    if not notebook:
        raise ValueError("write_notebook_results needs the notebook's name, e.g. '00_baseline'")
    unknown = set(seed_claims or ()) - set(SEED_CLAIMS)
    if unknown:
        raise ValueError(f"seed claims are keyed {', '.join(SEED_CLAIMS)}; got {sorted(unknown)}")
    check_same_architecture(records, smoke)
    records = [dict(as_dict(r), notebook=notebook) for r in records]
    results_dir = results_dir or paths.results_dir()
    path = Path(results_dir) / f"{notebook}.json"
    payload = {"smoke": bool(smoke), "records": records, "widgets": widgets or {},
               "seed_claims": {k: dict(v, notebook=notebook) for k, v in (seed_claims or {}).items()},
               "verdicts": verdicts or {}}
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
    return path


def assemble(run: dict, notebooks: dict, results_dir: Path | None = None,
             out: Path | None = None) -> dict:
    """Merge every ``build/results/<notebook>.json`` into one ``build/results.json`` (folders
    from ``edgelab.paths`` unless given)."""
    results_dir = Path(results_dir or paths.results_dir())
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
    atomic_write_bytes(Path(out or paths.results_file()),
                       (json.dumps(res, indent=2, default=_json_default) + "\n").encode())
    return res


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)
