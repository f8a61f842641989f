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

from . import paths, report, targets

__all__ = ["notebooks", "CELL_TIMEOUT_S", "execute", "run_info", "run"]


def notebooks() -> list[Path]:
    return sorted(p for p in paths.notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def _pss(p: psutil.Process) -> int:
    """Proportional set size: pages shared between processes (a fork, shared libraries) split
    among them, so a sum over the tree counts each page once, as a container limit does.
    Falls back to RSS where the OS has no PSS."""
    try:
        return p.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):
        return p.memory_info().rss


def _watch_peak(proc: psutil.Process, stop: threading.Event, peak: list[int],
                cap: int | None = None, pss_every_s: float = 1.0) -> None:
    """Peak memory of the kernel, sampled every 0.2 s: ``peak[0]`` the largest RSS of a single
    descendant of ``proc``, ``peak[1]`` the largest PSS summed over all of them (what a container's
    memory limit sees; a sum of RSS would count a forked child's shared pages twice). Past ``cap``
    bytes of that sum the whole tree is killed, as Binder's out-of-memory killer would;
    ``peak[2]`` = 1.

    RSS is cheap to read; PSS walks every mapping (about 14 ms for a kernel that imported torch),
    which at every sample would take a tenth of a core from the notebook being timed. Since
    PSS <= RSS, it is read only when the RSS sum could set a new peak or pass the cap, and at most
    once per ``pss_every_s``."""
    last_pss = 0.0
    while not stop.is_set():
        try:
            children = proc.children(recursive=True)
        except psutil.Error:
            return
        rss_total = 0
        for child in children:
            try:
                rss = child.memory_info().rss
            except psutil.Error:
                continue
            peak[0] = max(peak[0], rss)
            rss_total += rss
        could_matter = rss_total > peak[1] or (cap and rss_total > cap)
        if could_matter and time.monotonic() - last_pss >= pss_every_s:
            last_pss = time.monotonic()
            total = 0
            for child in children:
                try:
                    total += _pss(child)
                except psutil.Error:
                    continue
            peak[1] = max(peak[1], total)
            if cap and total > cap:
                peak[2] = 1
                for p in children + [proc]:
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                return
        stop.wait(0.2)


# The longest one cell may run before papermill gives up on it: a hung kernel then fails the run
# with a message instead of stalling CI until its own limit.
CELL_TIMEOUT_S = {True: 300, False: 900}


def execute(nb: Path, out_dir: Path, smoke: bool, extra_env: dict | None = None,
            cpus: str | None = None, memory_cap_mb: int | None = None,
            retries: int = 1) -> dict:
    """Run one notebook with papermill; returns its wall time and the kernel's peak RSS.

    ``cpus`` ("0", "0,1") pins papermill and its kernel to those CPUs with ``taskset``;
    ``memory_cap_mb`` kills the kernel when its process tree's PSS goes past it (``ulimit -v``
    would break ``import torch``). Together they stand in for Binder's 1 CPU and 2 GB.

    A failed run is repeated up to ``retries`` times (not one stopped by the memory cap): now and
    then the client misses a cell's reply after a widget was displayed and waits out the cell
    timeout (jupyter/nbclient#312). A real error fails every attempt."""
    for attempt in range(1, retries + 2):
        meta = _execute_once(nb, out_dir, smoke, extra_env, cpus, memory_cap_mb)
        meta["attempts"] = attempt
        if meta["ok"] or meta.get("over_cap"):
            return meta
        if attempt <= retries:
            print(f"{nb.name} failed after {meta['seconds']} s; running it once more "
                  f"(attempt {attempt + 1})", file=sys.stderr)
    return meta


def _execute_once(nb, out_dir, smoke, extra_env, cpus, memory_cap_mb) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["taskset", "-c", cpus] if cpus else []
    cmd += [sys.executable, "-m", "papermill", str(nb), str(out_dir / nb.name),
            "-k", "python3", "--cwd", str(nb.parent), "--no-progress-bar",
            "--execution-timeout", str(CELL_TIMEOUT_S[bool(smoke)]),
            "-p", "SMOKE", str(smoke), "-p", "NOTEBOOK", nb.stem]
    # Every figure a notebook shows passes edgelab.figures.check, or the run stops there.
    env = {"EDGELAB_CHECK_FIGURES": "1", **os.environ, **(extra_env or {})}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env)
    stop, peak = threading.Event(), [0, 0, 0]
    cap = memory_cap_mb * 2**20 if memory_cap_mb else None
    watcher = threading.Thread(target=_watch_peak, args=(psutil.Process(proc.pid), stop, peak, cap))
    watcher.start()
    rc = proc.wait()
    stop.set()
    watcher.join()
    meta = {"seconds": round(time.time() - t0, 1), "peak_rss_mb": round(peak[0] / 2**20),
            "peak_tree_mb": round(peak[1] / 2**20), "ok": rc == 0 and not peak[2]}
    if memory_cap_mb:
        meta["over_cap"] = bool(peak[2])
    return meta


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.repo_root(),
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_info(smoke: bool) -> dict:
    import torch

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
                   for p in sorted(paths.checkpoints_dir().glob("*.json"))}
    return {"smoke": smoke, "threads": torch.get_num_threads(), "cpu": cpu,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit(), "versions": versions, "checkpoints": checkpoints}


def _previous_metas(smoke: bool, keep: set[str]) -> dict:
    """The per-notebook metadata of the last run, for the notebooks in ``keep`` whose results are
    still on disk, if that run was in the same mode (smoke results never mix with full ones)."""
    try:
        prev = json.loads(paths.results_file().read_text())
    except (OSError, ValueError):
        return {}
    if prev.get("run", {}).get("smoke") != smoke:
        return {}
    return {k: v for k, v in prev.get("notebooks", {}).items()
            if k in keep and (paths.results_dir() / f"{k}.json").exists()}


def run(smoke: bool = False, only: list[str] | None = None) -> int:
    """Execute the notebooks and assemble ``build/results.json``. With ``only``, just those run;
    the other notebooks' results of the last run in the same mode are kept."""
    names = [nb.stem for nb in notebooks()]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise SystemExit(f"no notebook named {', '.join(unknown)}; valid: {', '.join(names)}")
    selected = [nb for nb in notebooks() if not only or nb.stem in only]
    metas = _previous_metas(smoke, set(names) - set(only)) if only else {}
    if metas:   # keep only the results that go with them: the rest is stale or re-run now
        for path in paths.results_dir().glob("*.json"):
            if path.stem not in metas:
                path.unlink()
    else:
        shutil.rmtree(paths.results_dir(), ignore_errors=True)
    info = run_info(smoke)
    if only:
        info["only"], info["kept"] = sorted(only), sorted(metas)
    failed = []
    for nb in selected:
        print(f"\n=== {nb.stem} (SMOKE={smoke}) ===", flush=True)
        meta = execute(nb, paths.executed_dir(), smoke)
        print(f"    {meta['seconds']:.0f} s, peak {meta['peak_rss_mb']} MB", flush=True)
        if not meta.pop("ok"):
            failed.append(nb.stem)
        metas[nb.stem] = meta
    metas = {k: metas[k] for k in names if k in metas}
    res = report.assemble(info, metas)
    kept = f" ({', '.join(info['kept'])} kept from the last run)" if info.get("kept") else ""
    print(f"\n{paths.results_file()}: {len(res['records'])} records from {len(metas)} notebooks"
          f"{kept}\n")
    print(targets.targets_table(res))
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
