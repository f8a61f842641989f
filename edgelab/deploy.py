"""ONNX export for any nn.Module and an example input, its numerical check against PyTorch, and
ONNX Runtime latency against threads and batch size (notebook 05). What goes on the Pi, and the
emulated Pi that checks it, are edgelab.pi.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import data, evaluation, latency, runtime

__all__ = ["ExportError", "export", "check_export", "latency_grid"]


class ExportError(RuntimeError):
    """A model that torch.onnx.export (dynamo) cannot capture."""


def export(model: nn.Module, path, example: torch.Tensor) -> Path:
    """``runtime.export_onnx`` (dynamo exporter, one self-contained ``.onnx`` file, dynamic
    batch, input ``image`` shaped like ``example``, output ``logits``), with one clear error when
    the model cannot be captured, instead of the exporter's page of traceback."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"export needs a torch.nn.Module, got {type(model).__name__}")
    try:
        with _quiet_torch_logs(), contextlib.redirect_stderr(io.StringIO()):
            return runtime.export_onnx(model, path, example)
    except Exception as e:   # torch.export raises many types; all mean "could not capture"
        cause = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause))
        first = next((line.strip() for line in text.splitlines() if line.strip()), repr(cause))
        raise ExportError(
            f"could not export {type(model).__name__} to ONNX: {type(cause).__name__}: "
            f"{first[:300]}\n"
            "torch.onnx.export(dynamo=True) captures the forward pass with torch.export: it "
            "needs a forward that takes one float tensor shaped like the example, uses torch operations "
            "(no numpy, no .item() or Python branches on tensor values) and returns one tensor "
            "of logits.") from e


def _quiet_torch_logs():
    """torch.export logs the graph it captured and its guesses when it fails; the ExportError
    says what matters."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] == "torch"]
    return runtime.quiet_logs(*names, level=logging.CRITICAL)


def check_export(model: nn.Module, path, images: torch.Tensor | None = None,
                 atol: float = 1e-4) -> dict:
    """Run ``images`` (a batch shaped like the export's example; Fashion-MNIST's first 256 test
    images when omitted) through the PyTorch model and the exported file (ONNX Runtime) and
    compare: the largest logit difference and how many top-1 predictions agree. Raises
    AssertionError if the logits differ by more than ``atol``."""
    images = data.tensors("test", limit=256)[0] if images is None else images
    with torch.inference_mode():
        expected = model.cpu().eval()(images).float().numpy()
    got = evaluation.predict_logits(runtime.session(path), images).numpy()
    diff = float(np.abs(expected - got).max())
    same = float((expected.argmax(1) == got.argmax(1)).mean())
    result = {"images": len(images), "max_abs_diff": diff, "same_top1": same}
    if not diff <= atol:
        raise AssertionError(f"{path}: ONNX Runtime's logits differ from PyTorch's by {diff:.2e} "
                             f"(> {atol:.0e}) on {len(images)} images: the export is wrong")
    return result


def latency_grid(path, threads=(1, 2, 3, 4), batch_sizes=(1, 64),
                 min_run_time: float = 1.0, ort_defaults: bool = False) -> list[dict]:
    """ONNX Runtime latency (median and p90 ms, real test images) of one ``.onnx`` file for
    every thread count and batch size: one row each. More threads than cores only adds
    contention; the notebook shows where that starts on the machine it runs on.
    ``ort_defaults``: ONNX Runtime's own session settings (as predict.py), not edgelab's."""
    rows = []
    for t in threads:
        sess = runtime.session(path, threads=t, ort_defaults=ort_defaults)
        for b in batch_sizes:
            med, p90 = latency.latency(sess, b, min_run_time, threads=t)
            rows.append({"threads": t, "batch": b, "median_ms": med, "p90_ms": p90,
                         "per_image_ms": med / b,
                         "settings": "onnxruntime defaults" if ort_defaults else "edgelab"})
        del sess
    return rows
