"""CPU latency, the edge stand-in: warm up, then time with torch.utils.benchmark, and for models
a table compares, interleave rounds so a slow spell of the machine lands on all of them.

Absolute times on a shared machine are noise; ratios between models measured in the same run
hold, and identical architectures must time alike (``same_architecture_problems``)."""
from __future__ import annotations

import logging

import numpy as np
import torch

from . import data
from .evaluation import is_onnx_session

__all__ = ["latency", "interleaved_latency", "remeasure_latency", "architecture_key",
           "quick_latency", "SAME_ARCH_TOLERANCE", "same_architecture_problems",
           "check_same_architecture"]

# torch.utils.benchmark imports cpp_extension, which logs a CUDA warning on CPU-only machines.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _timer_stats(fn, min_run_time: float, threads: int, warmup: int = 3) -> tuple[float, float]:
    """Median and 90th percentile in ms, from torch.utils.benchmark after ``warmup`` calls."""
    import torch.utils.benchmark as benchmark

    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = np.array(m.times) * 1e3
    return float(np.median(times)), float(np.percentile(times, 90))


def _batch(batch_size: int, images: torch.Tensor | None) -> torch.Tensor:
    """The first ``batch_size`` of ``images`` (repeated if there are fewer), by default of the
    test set: real images, since a runtime may take a shortcut on zeros."""
    if images is None:
        return data.tensors("test", limit=batch_size)[0]
    return images[torch.arange(batch_size) % len(images)]


def _latency_fn(model, x):
    if is_onnx_session(model):
        feed = {model.get_inputs()[0].name: x.numpy()}
        return lambda: model.run(None, feed)
    model = model.cpu().eval()

    def fn():
        with torch.inference_mode():
            model(x)
    return fn


def latency(model, batch_size: int = 1, min_run_time: float = 1.0,
            threads: int | None = None, images: torch.Tensor | None = None) -> tuple[float, float]:
    """CPU latency (median, p90) in ms of one forward pass on a batch of real images: the first
    ``batch_size`` of ``images`` (repeated if there are fewer), by default of the test set."""
    return _timer_stats(_latency_fn(model, _batch(batch_size, images)), min_run_time,
                        threads or torch.get_num_threads())


def interleaved_latency(models: dict, batch_size: int = 1, rounds: int = 7,
                        min_run_time: float = 1.0, threads: int | None = None,
                        images: torch.Tensor | None = None) -> dict[str, dict]:
    """Latency of several models measured in turns: after a warm-up of each, every round times
    each model once (in a rotated order), so a slow spell of the machine (another process, a
    frequency change) lands on all of them instead of on whichever was measured then. Each model's
    figure is the median of its round medians; ``spread_ms`` is the range of those round medians.
    ``min_run_time`` is each model's total timing budget, split over the rounds. Returns
    {name: {"median_ms", "p90_ms", "spread_ms": (lo, hi), "rounds"}}."""
    if not models:
        raise ValueError("interleaved_latency needs at least one model")
    if rounds < 3:
        raise ValueError(f"rounds must be at least 3 for a median of rounds, got {rounds}")
    threads = threads or torch.get_num_threads()
    x = _batch(batch_size, images)
    fns = {name: _latency_fn(m, x) for name, m in models.items()}
    names = list(fns)
    per_round = {n: [] for n in names}
    p90 = {n: [] for n in names}
    for n in names:   # warm-up: first calls allocate, compile and fill caches
        _timer_stats(fns[n], min_run_time / rounds / 2, threads)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            med, hi = _timer_stats(fns[n], min_run_time / rounds, threads, warmup=1)
            per_round[n].append(med)
            p90[n].append(hi)
    return {n: {"median_ms": float(np.median(per_round[n])), "p90_ms": float(np.median(p90[n])),
                "spread_ms": (float(min(per_round[n])), float(max(per_round[n]))), "rounds": rounds}
            for n in names}


def remeasure_latency(records: list, models: dict, batch_sizes=(1, 64), rounds: int = 7,
                      min_run_time: float = 1.0, threads: int | None = None) -> list:
    """Replace the latencies of the records named in ``models`` ({record name: model}) by one
    interleaved measurement of all of them (``interleaved_latency``): the protocol for models
    a table compares, identical architectures above all. Returns the records, updated."""
    by_name = {r["name"]: r for r in records if r["name"] in models}
    missing = set(models) - set(by_name)
    if missing:
        raise KeyError(f"no record named {sorted(missing)} to update; records: "
                       f"{[r['name'] for r in records]}")
    for b in batch_sizes:
        res = interleaved_latency(models, b, rounds, min_run_time, threads)
        for name, r in res.items():
            rec = by_name[name]
            rec[f"latency_b{b}_ms"], rec[f"latency_b{b}_p90_ms"] = r["median_ms"], r["p90_ms"]
            rec[f"latency_b{b}_spread_ms"] = list(r["spread_ms"])
            rec["latency_protocol"] = f"interleaved over {len(models)} models, {rounds} rounds"
    return records


def architecture_key(model, onnx_bytes: bytes | None = None) -> str:
    """A short fingerprint of what a forward pass computes with: module types and tensor shapes,
    dtypes and quantization schemes (torch), or operator types and initializer shapes and dtypes (an ONNX session,
    given its file's bytes). Weights' values do not enter, so a copy pruned to zeros keys like
    its dense original; "" where it cannot be read."""
    import hashlib

    h = hashlib.sha1()
    try:
        if is_onnx_session(model):
            import onnx

            if onnx_bytes is None:
                return ""
            g = onnx.load_from_string(onnx_bytes).graph
            for node in g.node:
                h.update(node.op_type.encode())
            for t in g.initializer:
                h.update(f"{t.name}{list(t.dims)}{t.data_type}".encode())
        else:
            for name, m in model.named_modules():
                h.update(f"{name}:{type(m).__name__}".encode())
            for k, v in model.state_dict().items():
                shape = tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
                # per-tensor and per-channel int8 run different requantization kernels
                scheme = v.qscheme() if getattr(v, "is_quantized", False) else ""
                h.update(f"{k}{shape}{getattr(v, 'dtype', '')}{scheme}".encode())
    except Exception:   # an exotic module or graph: no key, so no same-architecture check
        return ""
    return h.hexdigest()[:12]


def quick_latency(model, runs: int = 10) -> float:
    """Median ms of a few batch-1 runs after one warm-up: for sliders, where a second matters
    more than the last percent of precision. Records use ``latency()``."""
    import time

    x, _ = data.tensors("test", limit=1)
    model = model.cpu().eval()
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


SAME_ARCH_TOLERANCE = 0.10


def _rounds_overlap(a: dict, b: dict, b_size: int) -> bool:
    """Whether two interleaved measurements' ranges of round medians overlap: then the rounds
    themselves say the two are not told apart. False where either has no rounds."""
    ra, rb = a.get(f"latency_b{b_size}_spread_ms"), b.get(f"latency_b{b_size}_spread_ms")
    if not ra or not rb:
        return False
    return ra[0] <= rb[1] and rb[0] <= ra[1]


def same_architecture_problems(records: list[dict], tolerance: float = SAME_ARCH_TOLERANCE) -> list[str]:
    """Records of one architecture (``architecture_key``) in one runtime, with the same
    threads, whose latencies differ by more than ``tolerance`` at some batch size, and, where
    both were timed in interleaved rounds, by more than their own round-to-round range (the
    slowest round of the faster one is still faster than the fastest round of the slower one): a
    table would then suggest that training (distillation, a seed, zeroed weights) changed the
    speed. On the 2-core reference machine one model's round medians spread by 10 % and more,
    and a fixed 10 % alone failed identical models in two or three notebooks of each full run
    (the closing notes of 2026-12-01 and -02)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("arch"):
            groups.setdefault((r["arch"], r["runtime"], r.get("threads")), []).append(r)
    found = []
    for rs in groups.values():
        if len(rs) < 2:
            continue
        for b in (1, 64):
            lat = sorted((r[f"latency_b{b}_ms"], i) for i, r in enumerate(rs)
                         if r.get(f"latency_b{b}_ms"))
            if len(lat) < 2:
                continue
            (lo, i_lo), (hi, i_hi) = lat[0], lat[-1]
            fast, slow = rs[i_lo], rs[i_hi]
            if hi > (1 + tolerance) * lo and not _rounds_overlap(fast, slow, b):
                found.append(f"{slow['name']} ({hi:.3g} ms) and {fast['name']} ({lo:.3g} ms) have "
                             f"the same architecture but differ by {100 * (hi / lo - 1):.0f} % at "
                             f"batch {b} (allowed {100 * tolerance:.0f} %, or within their rounds' "
                             "range): measure them together with latency.remeasure_latency")
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
