"""One ``measure()`` for every model in every notebook, so that numbers compare.

A record (``records.Record``) holds accuracy, parameter counts, MACs, bytes as shipped (raw and
gzip-compressed) and CPU latency at batch 1 and 64 (median and 90th percentile after a warm-up,
thread count noted). Latency is always taken on the CPU: the edge stand-in. ``measure_onnx``
measures an exported ``.onnx`` file with the counts of the model it came from.

The parts live by concern, each name in one module: ``counts``, ``sizes``, ``latency``,
``evaluation``, ``memory`` (``setup_notebook``), ``records``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .counts import count_macs, count_nonzero, count_params
from .evaluation import (accuracy, cached_correct_mask, is_onnx_session, pack_mask,
                         predict_logits)
from .latency import architecture_key, latency
from .records import Record
from .sizes import artifact_sizes, saved_sizes

__all__ = ["measure", "measure_onnx"]


def measure(model, name: str, *, notebook: str | None = None, tags=(), limit: int | None = None,
            batch_sizes=(1, 64), min_run_time: float = 1.0, artifact: bytes | str | Path | None = None,
            params: int | None = None, nonzero: int | None = None, macs: int | None = None,
            threads: int | None = None, images: torch.Tensor | None = None,
            labels: torch.Tensor | None = None, val: int | None = None) -> Record:
    """Measure a torch module or an ONNX Runtime session; returns one ``Record``.

    ``artifact`` is what ships (bytes or a file path); for a torch module it defaults to its
    saved state dict. For an ``.onnx`` file, ``measure_onnx`` does the rest (session, counts of
    the model it came from). Accuracy and latency use Fashion-MNIST's test set, or ``images``
    and ``labels`` for any other model and data; ``limit`` evaluates on the first N only
    (performance claims use the full 10k). ``val=N`` also measures ``val_accuracy`` on the
    first N validation images, for choosing between models without looking at the test set."""
    if (images is None) != (labels is None):
        raise ValueError("pass images and labels together (the test set of your model's data), "
                         "or neither for Fashion-MNIST's")
    threads = threads or torch.get_num_threads()
    onnx = is_onnx_session(model)
    if artifact is None:
        if onnx:
            raise ValueError("measure() of an ONNX Runtime session needs artifact=<path to .onnx>; "
                             "measure_onnx(path, name, source_model) passes it for you")
        raw, gz = saved_sizes(model)
        arch = architecture_key(model)
    else:
        if isinstance(artifact, (str, Path)):
            artifact = Path(artifact).read_bytes()
        raw, gz = artifact_sizes(artifact)
        arch = architecture_key(model, artifact if onnx else None)
        del artifact
    cached = False
    if images is None:
        mask, cached = cached_correct_mask(model, limit)
    else:
        images, labels = images[:limit], labels[:limit]
        mask = predict_logits(model, images).argmax(1) == labels
    record = Record(
        notebook=notebook or os.environ.get("EDGELAB_NOTEBOOK"),
        name=name, tags=list(tags),
        # a session is ONNX Runtime's, or an edge.EdgeSession that names its runtime
        runtime=getattr(model, "runtime", "onnxruntime") if onnx else "torch",
        accuracy=float(mask.float().mean()), test_images=len(mask),
        params=params if params is not None else (None if onnx else count_params(model)),
        nonzero_params=nonzero if nonzero is not None else (None if onnx else count_nonzero(model)),
        macs=macs if macs is not None else (None if onnx else count_macs(model, images)),
        bytes=raw, gzip_bytes=gz, arch=arch,
        # which images it got right: the paired ± of an accuracy difference needs them
        correct=pack_mask(mask) if images is None else None, threads=threads)
    if cached:   # the same weights' answers, computed earlier (evaluation.cached_correct_mask)
        record["accuracy_cached"] = True
    if val:
        record.val_accuracy, record.val_images = accuracy(model, val, split="val")
    for b in batch_sizes:
        med, p90 = latency(model, b, min_run_time, threads, images)
        record[f"latency_b{b}_ms"], record[f"latency_b{b}_p90_ms"] = med, p90
    return record


def measure_onnx(path: str | Path, name: str, source_model, *, session=None,
                 threads: int | None = None, **kwargs) -> Record:
    """Measure the ``.onnx`` file at ``path``: accuracy and latency in an ONNX Runtime session
    (``session`` if you keep one to time again later, else a new one with ``threads``), bytes of
    the file, and the parameter and MAC counts of ``source_model``, the torch module it was
    exported from (an ONNX graph's initializers miss what quantization or fusion folded away).
    Other keywords are ``measure``'s (``tags``, ``limit``, ``val``, ``batch_sizes``, ...)."""
    from . import runtime

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"measure_onnx: no ONNX file at {path} (export it first, e.g. "
                                "runtime.export_onnx or deploy.export)")
    if is_onnx_session(source_model) or not isinstance(source_model, torch.nn.Module):
        raise TypeError("measure_onnx counts parameters and MACs on the torch module the file was "
                        f"exported from; source_model is a {type(source_model).__name__}")
    for k in ("artifact", "params", "nonzero", "macs"):
        if k in kwargs:
            raise TypeError(f"measure_onnx takes {k} from the file and source_model; "
                            "call measure() to pass it by hand")
    session = session or runtime.session(path, threads=threads)
    return measure(session, name, artifact=path, threads=threads,
                   params=count_params(source_model), nonzero=count_nonzero(source_model),
                   macs=count_macs(source_model, kwargs.get("images")), **kwargs)
