"""One ``measure()`` for every model in every notebook, so that numbers compare.

A record holds accuracy, parameter counts, MACs, bytes as shipped (raw and gzip-compressed) and
CPU latency at batch 1 and 64 (median and 90th percentile after a warm-up, thread count noted).
Latency is always taken on the CPU: the edge stand-in. Absolute times on a shared machine are
noise; ratios between models measured in the same run hold.
"""
from __future__ import annotations

import base64
import copy
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import data

__all__ = ["setup_notebook", "release_memory", "release_after_every_cell", "is_onnx_session",
           "count_params", "count_nonzero", "example_input", "count_macs", "macs_by_layer",
           "peak_activation_bytes", "state_dict_bytes", "GZIP_CHUNK", "saved_sizes", "saved_size", "gzip_compress",
           "gzip_size", "artifact_sizes", "latency", "interleaved_latency", "remeasure_latency",
           "architecture_key", "quick_latency", "predict_logits",
           "accuracy_on", "accuracy", "correct_mask", "pack_mask", "unpack_mask", "measure"]

# torch.utils.benchmark imports cpp_extension, which logs a CUDA warning on CPU-only machines.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def release_memory(full: bool = True) -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise), so
    models deleted in earlier cells stop counting towards the notebook's resident memory.
    ``full=False`` collects only the young generations: well under a millisecond, against a
    fifth of a second for a full pass once torch's compiler stack is imported."""
    import ctypes
    import gc

    gc.collect() if full else gc.collect(1)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows): nothing to trim
        pass


def _fewer_malloc_arenas(n: int = 2) -> None:
    """glibc gives each new thread (torch's, ONNX Runtime's, the kernel's) its own heap arena, up
    to 8 per core, and each one keeps its freed pages fragmented; a notebook creeps up by
    hundreds of MB. Two arenas cost nothing measurable here. MALLOC_ARENA_MAX, if set, wins."""
    import ctypes

    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


def _release_after_cell(result=None) -> None:
    release_memory(full=False)


def release_after_every_cell() -> None:
    """In a Jupyter kernel, trim the heap after every cell. Without it freed memory piles up
    cell after cell (glibc's arenas keep what they once held), and Binder's 2 GB limit counts
    the resident size, not what Python still uses. Outside IPython this does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    hooks = shell.events.callbacks["post_run_cell"]
    if not any(getattr(h, "__name__", "") == "_release_after_cell" for h in hooks):
        shell.events.register("post_run_cell", _release_after_cell)


def setup_notebook() -> None:
    """What a notebook calls once, after its imports: two malloc arenas and a heap trim after
    every cell, so the kernel's resident memory tracks what Python still holds (Binder's 2 GB
    limit counts resident memory), and the workbook's figure style. Importing edgelab changes
    nothing by itself."""
    from .figures import style

    _fewer_malloc_arenas()
    release_after_every_cell()
    style()


def is_onnx_session(model) -> bool:
    return hasattr(model, "get_inputs") and hasattr(model, "run")


def count_params(model: nn.Module) -> int:
    """Parameters that are stored: weights and biases (masked pruning counts the original)."""
    return sum(t.numel() for t in _weights(model))


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(t)) for t in _weights(model))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """The tensors a forward pass multiplies with, one per parameter, dequantized if packed."""
    out = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            # torch.nn.utils.prune keeps 'weight_orig' as the parameter and the masked 'weight'
            # as a buffer: count what the forward pass uses.
            if name.endswith("_orig") and hasattr(module, name[:-5]):
                p = getattr(module, name[:-5])
            out.append(p.detach())
        for name in ("weight", "bias"):  # quantized modules expose packed params as methods
            getter = getattr(module, name, None)
            if callable(getter) and not isinstance(getter, torch.Tensor):
                t = getter()
                if isinstance(t, torch.Tensor):
                    out.append(t.dequantize() if t.is_quantized else t.detach())
    return out


def example_input(example=None) -> torch.Tensor:
    """One input row: ``example`` (a tensor, whose first row is taken, or a full shape such as
    ``(1, 3, 32, 32)``), or by default one Fashion-MNIST-shaped image."""
    if example is None:
        return torch.zeros(1, *data.INPUT_SHAPE)
    if isinstance(example, torch.Tensor):
        return torch.zeros_like(example[:1])
    if isinstance(example, (tuple, list, torch.Size)) and all(isinstance(d, int) for d in example):
        return torch.zeros(1, *tuple(example)[1:])
    raise TypeError(f"example must be an input tensor or its shape, e.g. (1, 3, 32, 32); "
                    f"got {example!r}")


def count_macs(model: nn.Module, example=None) -> int:
    """Multiply-accumulates of one forward pass of one ``example`` row (see ``example_input``),
    from torch's flop counter (1 MAC = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(example_input(example))
    return counter.get_total_flops() // 2


def macs_by_layer(model: nn.Module, example=None) -> dict[str, int]:
    """MACs of each Conv2d / Linear module, keyed by its name in the model."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(example_input(example))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            flops = sum(counts.get(f"{root}.{name}", {}).values())
            out[name] = flops // 2
    return out


def peak_activation_bytes(model: nn.Module, example=None, bytes_per_value: int = 4) -> dict:
    """The most activation memory one forward pass holds at once: the input, every output not
    yet consumed by its last user (a residual branch stays alive across its block) and the output
    being computed, at ``bytes_per_value`` (4: fp32, 1: int8). A liveness walk over the torch.fx
    graph with its shapes propagated; no in-place reuse or operator fusion is assumed, so a
    runtime's memory planner can do better. Returns {"peak_bytes", "at", "per_node"}."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    x = example_input(example)
    gm = symbolic_trace(copy.deepcopy(model).eval())
    ShapeProp(gm).propagate(x)
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max([index.get(u, len(nodes)) for u in n.users] or [index[n]]) for n in nodes}

    def size(n):
        meta = n.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape") or n.op == "get_attr":
            return 0
        return int(torch.Size(meta.shape).numel()) * bytes_per_value
    per_node, peak, at = [], 0, None
    for i, n in enumerate(nodes):
        live = sum(size(m) for m in nodes[:i + 1] if last_use[m] >= i)
        per_node.append((n.name, live))
        if live > peak:
            peak, at = live, n.name
    return {"peak_bytes": peak, "at": at, "per_node": per_node}


def state_dict_bytes(model: nn.Module) -> bytes:
    """The bytes ``torch.save(model.state_dict())`` writes: what a PyTorch model ships as."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


GZIP_CHUNK = 8 << 20


class _SizeOnly(io.RawIOBase):
    """A write-only file that keeps only the size of what is saved to it, raw and gzipped: a
    record needs no copy of a model's tens of MB (a save into memory peaks at about three)."""

    def __init__(self, gzip: bool = True):
        self.gzip, self.raw, self.gz, self.pending = gzip, 0, 0, bytearray()

    def writable(self):
        return True

    def write(self, b):
        n = memoryview(b).nbytes
        self.raw += n
        if not self.gzip:
            return n
        self.pending += b
        while len(self.pending) >= GZIP_CHUNK:  # the same members gzip_compress() cuts
            self.gz += len(_gzip_member(memoryview(self.pending)[:GZIP_CHUNK]))
            del self.pending[:GZIP_CHUNK]
        return n

    def sizes(self) -> tuple[int, int]:
        if self.gzip and (self.pending or not self.raw):
            self.gz += len(_gzip_member(bytes(self.pending)))
            self.pending = bytearray()
        return self.raw, self.gz


def saved_sizes(model: nn.Module) -> tuple[int, int]:
    """``artifact_sizes(state_dict_bytes(model))`` without holding the saved bytes."""
    out = _SizeOnly()
    torch.save(model.state_dict(), out)
    return out.sizes()


def saved_size(model: nn.Module | dict) -> int:
    """``len(state_dict_bytes(model))`` (or of a state dict as given), neither holding nor
    compressing the bytes."""
    out = _SizeOnly(gzip=False)
    torch.save(model if isinstance(model, dict) else model.state_dict(), out)
    return out.raw


def _gzip_member(piece) -> bytes:
    import zlib

    z = zlib.compressobj(1, zlib.DEFLATED, 31, 8, zlib.Z_RLE)  # wbits 31: a gzip member
    return z.compress(piece) + z.flush()


def gzip_compress(chunks, chunk_bytes: int = GZIP_CHUNK) -> bytes:
    """The chunks as one multi-member .gz file (``gzip -d`` reads it whole).

    zlib level 1 with the run-length strategy, two chunks at a time (zlib releases the GIL):
    on weights it is about five times faster than gzip's default level and within a few percent
    of its size, so a slider can afford it, and every record and slider in the workbook uses it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return b"".join(pool.map(_gzip_member, _pieces(chunks, chunk_bytes)))


def gzip_size(chunks, chunk_bytes: int = GZIP_CHUNK) -> int:
    """``len(gzip_compress(chunks))``, keeping no compressed bytes (tens of MB for a model)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return sum(pool.map(lambda piece: len(_gzip_member(piece)), _pieces(chunks, chunk_bytes)))


def _pieces(chunks, chunk_bytes: int) -> list[memoryview]:
    """Each chunk's bytes cut into ``chunk_bytes`` pieces: views, not copies."""
    pieces = []
    for c in chunks:
        if isinstance(c, torch.Tensor):
            c = c.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        c = memoryview(c).cast("B")
        pieces += [c[i:i + chunk_bytes] for i in range(0, max(len(c), 1), chunk_bytes)]
    return pieces


def artifact_sizes(blob: bytes) -> tuple[int, int]:
    """Raw and gzip-compressed size; gzip shows what zeros and repeats are worth on the wire."""
    return len(blob), gzip_size([blob])


def _timer_stats(fn, min_run_time: float, threads: int, warmup: int = 3) -> tuple[float, float]:
    """Median and 90th percentile in ms, from torch.utils.benchmark after ``warmup`` calls."""
    import torch.utils.benchmark as benchmark

    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = np.array(m.times) * 1e3
    return float(np.median(times)), float(np.percentile(times, 90))


def latency(model, batch_size: int = 1, min_run_time: float = 1.0,
            threads: int | None = None, images: torch.Tensor | None = None) -> tuple[float, float]:
    """CPU latency (median, p90) in ms of one forward pass on a batch of real images: the first
    ``batch_size`` of ``images`` (repeated if there are fewer), by default of the test set."""
    threads = threads or torch.get_num_threads()
    if images is None:
        x, _ = data.tensors("test", limit=batch_size)
    else:
        x = images[torch.arange(batch_size) % len(images)]
    if is_onnx_session(model):
        feed = {model.get_inputs()[0].name: x.numpy()}
        fn = lambda: model.run(None, feed)  # noqa: E731
    else:
        model = model.cpu().eval()

        def fn():
            with torch.inference_mode():
                model(x)
    return _timer_stats(fn, min_run_time, threads)


def _latency_fn(model, x):
    if is_onnx_session(model):
        feed = {model.get_inputs()[0].name: x.numpy()}
        return lambda: model.run(None, feed)
    model = model.cpu().eval()

    def fn():
        with torch.inference_mode():
            model(x)
    return fn


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
    if images is None:
        x, _ = data.tensors("test", limit=batch_size)
    else:
        x = images[torch.arange(batch_size) % len(images)]
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


def remeasure_latency(records: list[dict], models: dict, batch_sizes=(1, 64), rounds: int = 7,
                      min_run_time: float = 1.0, threads: int | None = None) -> list[dict]:
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
    """A short fingerprint of what a forward pass computes with: module types and tensor shapes
    and dtypes (torch), or operator types and initializer shapes and dtypes (an ONNX session,
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
                h.update(f"{k}{shape}{getattr(v, 'dtype', '')}".encode())
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


def predict_logits(model, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits for normalised images, for a torch module or an ONNX Runtime session. Batches of 64
    are as fast here as larger ones and keep the activations, hence peak memory, small."""
    outs = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        if is_onnx_session(model):
            outs.append(torch.from_numpy(model.run(None, {model.get_inputs()[0].name: x.numpy()})[0]))
        else:
            with torch.inference_mode():
                outs.append(model.cpu().eval()(x).float())
    return torch.cat(outs)


def accuracy_on(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (a fraction) on given normalised images."""
    return float((predict_logits(model, images).argmax(1) == labels).float().mean())


def correct_mask(model, limit: int | None = None, split: str = "test") -> torch.Tensor:
    """Which of the first ``limit`` images of a split (all by default) the model gets right,
    normalised batch by batch rather than all at once (31 MB for the test set)."""
    return torch.cat([predict_logits(model, x).argmax(1) == y
                      for x, y in data.loader(split, batch_size=64, shuffle=False, limit=limit)])


def accuracy(model, limit: int | None = None, split: str = "test") -> tuple[float, int]:
    """Top-1 accuracy on the first ``limit`` images of a split, and how many images that was."""
    mask = correct_mask(model, limit, split)
    return float(mask.float().mean()), len(mask)


def pack_mask(mask: torch.Tensor) -> str:
    """A bool vector as base64 of its packed bits: 10,000 test images in 1.7 kB of JSON."""
    return base64.b64encode(np.packbits(mask.numpy().astype(bool)).tobytes()).decode()


def unpack_mask(packed: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(packed), np.uint8))[:n].astype(bool)


def measure(model, name: str, *, notebook: str | None = None, tags=(), limit: int | None = None,
            batch_sizes=(1, 64), min_run_time: float = 1.0, artifact: bytes | str | Path | None = None,
            params: int | None = None, nonzero: int | None = None, macs: int | None = None,
            threads: int | None = None, images: torch.Tensor | None = None,
            labels: torch.Tensor | None = None, val: int | None = None) -> dict:
    """Measure a torch module or an ONNX Runtime session; returns one record.

    ``artifact`` is what ships (bytes or a file path); for a torch module it defaults to its
    saved state dict. For an ONNX session pass the ``.onnx`` path and the counts (``params``,
    ``macs``) of the model it came from. Accuracy and latency use Fashion-MNIST's test set, or
    ``images`` and ``labels`` for any other model and data; ``limit`` evaluates on the first N
    only (performance claims use the full 10k). ``val=N`` also measures ``val_accuracy`` on the
    first N validation images, for choosing between models without looking at the test set."""
    if (images is None) != (labels is None):
        raise ValueError("pass images and labels together (the test set of your model's data), "
                         "or neither for Fashion-MNIST's")
    threads = threads or torch.get_num_threads()
    onnx = is_onnx_session(model)
    if artifact is None:
        if onnx:
            raise ValueError("measure() of an ONNX Runtime session needs artifact=<path to .onnx>")
        raw, gz = saved_sizes(model)
        arch = architecture_key(model)
    else:
        if isinstance(artifact, (str, Path)):
            artifact = Path(artifact).read_bytes()
        raw, gz = artifact_sizes(artifact)
        arch = architecture_key(model, artifact if onnx else None)
        del artifact
    if images is None:
        mask = correct_mask(model, limit)
    else:
        images, labels = images[:limit], labels[:limit]
        mask = predict_logits(model, images).argmax(1) == labels
    acc, n = float(mask.float().mean()), len(mask)
    record = {
        "notebook": notebook or os.environ.get("EDGELAB_NOTEBOOK"),
        "name": name, "tags": list(tags), "runtime": "onnxruntime" if onnx else "torch",
        "accuracy": acc, "test_images": n,
        "params": params if params is not None else (None if onnx else count_params(model)),
        "nonzero_params": nonzero if nonzero is not None else (None if onnx else count_nonzero(model)),
        "macs": macs if macs is not None else (None if onnx else count_macs(model, images)),
        "bytes": raw, "gzip_bytes": gz, "arch": arch,
        # which images it got right: the paired ± of an accuracy difference needs them
        "correct": pack_mask(mask) if images is None else None,
    }
    if val:
        record["val_accuracy"], record["val_images"] = accuracy(model, val, split="val")
    for b in batch_sizes:
        med, p90 = latency(model, b, min_run_time, threads, images)
        record[f"latency_b{b}_ms"], record[f"latency_b{b}_p90_ms"] = med, p90
    record["threads"] = threads
    return record
