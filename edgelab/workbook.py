"""Execute the workbook headlessly and assemble ``build/results.json`` (what ``make run`` does).

Each notebook runs in its own papermill process with its parameters injected; its wall time and
the peak resident memory of the kernel are measured from outside, by polling the process tree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

from . import report
from .data import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
EXECUTED = report.BUILD / "executed"


def notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _watch_peak(proc: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    """Largest RSS of any descendant of ``proc`` (the kernel), sampled every 0.2 s."""
    while not stop.is_set():
        try:
            for child in proc.children(recursive=True):
                try:
                    peak[0] = max(peak[0], child.memory_info().rss)
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        stop.wait(0.2)


# The longest one cell may run before papermill gives up on it: a hung kernel then fails the run
# with a message instead of stalling CI until its own limit.
CELL_TIMEOUT_S = {True: 300, False: 900}


def execute(nb: Path, out_dir: Path, smoke: bool, extra_env: dict | None = None) -> dict:
    """Run one notebook with papermill; returns its wall time and the kernel's peak RSS."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(nb), str(out_dir / nb.name),
           "-k", "python3", "--cwd", str(nb.parent), "--no-progress-bar",
           "--execution-timeout", str(CELL_TIMEOUT_S[bool(smoke)]),
           "-p", "SMOKE", str(smoke), "-p", "NOTEBOOK", nb.stem]
    env = dict(os.environ, **(extra_env or {}))
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env)
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_peak, args=(psutil.Process(proc.pid), stop, peak))
    watcher.start()
    rc = proc.wait()
    stop.set()
    watcher.join()
    return {"seconds": round(time.time() - t0, 1), "peak_rss_mb": round(peak[0] / 2**20),
            "ok": rc == 0}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_info(smoke: bool) -> dict:
    import torch
    from .models import CHECKPOINT_DIR

    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "onnxruntime", "onnx", "torchao", "torch-pruning"):
        try:  # from the installed metadata: importing torchao just to ask would cost seconds
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    checkpoints = {p.stem: json.loads(p.read_text()).get("sha256")
                   for p in sorted(CHECKPOINT_DIR.glob("*.json"))}
    return {"smoke": smoke, "threads": torch.get_num_threads(), "cpu": cpu,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit(), "versions": versions, "checkpoints": checkpoints}


def run(smoke: bool = False, only: list[str] | None = None) -> int:
    shutil.rmtree(report.RESULTS_DIR, ignore_errors=True)
    info = run_info(smoke)
    metas, failed = {}, []
    for nb in notebooks():
        if only and nb.stem not in only:
            continue
        print(f"\n=== {nb.stem} (SMOKE={smoke}) ===", flush=True)
        meta = execute(nb, EXECUTED, smoke)
        print(f"    {meta['seconds']:.0f} s, peak {meta['peak_rss_mb']} MB", flush=True)
        if not meta.pop("ok"):
            failed.append(nb.stem)
        metas[nb.stem] = meta
    res = report.assemble(info, metas)
    print(f"\nbuild/results.json: {len(res['records'])} records from {len(metas)} notebooks\n")
    print(report.targets_table(res))
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (see build/executed/)", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgelab.workbook")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute every notebook and assemble build/results.json")
    r.add_argument("--smoke", action="store_true", help="small sizes (as CI runs them)")
    r.add_argument("--only", nargs="*", help="notebook names, e.g. 00_baseline")
    args = p.parse_args(argv)
    return run(args.smoke, args.only)


if __name__ == "__main__":
    sys.exit(main())
