"""Calibration methods side by side: how a static int8 flow turns calibration images into
activation ranges.

ONNX Runtime's static quantization with each of its calibrators (``ort_calibrated``, files
through the one cache, ``edgelab.cache``), the ranges it chose read back from the QDQ graph
(``activation_ranges``), and torch.ao's activation observers swapped in a prepared model
(``use_activation_observer``) so that only the observer differs between two runs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn

from .runtime import CALIBRATIONS

__all__ = ["METHODS", "OBSERVERS", "model_key", "images_key", "fp32_onnx", "ort_calibrated",
           "activation_ranges", "use_activation_observer"]

METHODS = CALIBRATIONS                               # ONNX Runtime's, as runtime.ort_static names them
OBSERVERS = ("minmax", "histogram")                  # torch.ao activation observers


def model_key(model: nn.Module) -> str:
    """A hash of what an exported graph depends on: the module tree (``repr``) and every
    tensor of the state dict. Forward code that ``repr`` does not show is not covered."""
    h = hashlib.sha256(repr(model).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def images_key(images: torch.Tensor) -> str:
    """A hash of the calibration images themselves: another set of the same size is a miss."""
    t = images.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fp32_onnx(model: nn.Module, example: torch.Tensor, name: str,
              cache_dir: Path | None = None) -> Path:
    """``model`` exported once (``runtime.export_onnx``) to ``build/cache/<name>-<key>.onnx``,
    keyed by the model and the input shape; a rerun reuses the file."""
    from . import cache, runtime

    out = cache.path(name, [model_key(model), list(example.shape[1:])], ".onnx", cache_dir)
    if not out.is_file():
        runtime.export_onnx(model, out, example)
    return out


def ort_calibrated(model: nn.Module, images: torch.Tensor, calibration: str = "minmax", *,
                   name: str, example: torch.Tensor | None = None, per_channel: bool = True,
                   activations: str = "uint8", cache_dir: Path | None = None) -> Path:
    """The path of ``model`` quantized by ONNX Runtime's static QDQ flow with the
    ``calibration`` calibrator on ``images``: ``build/cache/<name>-int8-<key>.onnx``, keyed by
    the model, the images' contents and every option, so a rerun reuses it. Percentile and
    entropy hold every intermediate output of every calibration batch until they are done:
    a few dozen images of a ResNet18 at 28x28 is hundreds of MB."""
    from . import cache, runtime

    if calibration not in METHODS:
        raise ValueError(f"calibration must be one of {METHODS}, got {calibration!r}")
    runtime.check_calibration(images)
    example = images[:2] if example is None else example
    fp32 = fp32_onnx(model, example, name, cache_dir)
    reduce_range = activations == "uint8" and runtime.u8s8_saturates()   # ort_static's default
    out = cache.path(f"{name}-int8", [model_key(model), list(example.shape[1:]), calibration,
                                      per_channel, activations, images_key(images)]
                     + ([{"reduce_range": True}] if reduce_range else []), ".onnx", cache_dir)
    if not out.is_file():
        runtime.ort_static(fp32, out, images, per_channel=per_channel, activations=activations,
                           calibration=calibration, reduce_range=reduce_range)
    return out


def activation_ranges(onnx_path) -> dict[str, tuple[float, float]]:
    """The range each QuantizeLinear of a QDQ model maps onto its integer codes,
    ``{tensor: (low, high)}`` = ``((qmin - zp) * scale, (qmax - zp) * scale)``: what the
    calibrator chose for each activation (weights are stored already quantized)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(onnx_path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    out = {}
    for n in g.node:
        if n.op_type != "QuantizeLinear" or n.input[1] not in init:
            continue
        scale = float(init[n.input[1]].reshape(-1)[0])
        zp = init[n.input[2]] if len(n.input) > 2 and n.input[2] in init else None
        signed = zp is not None and zp.dtype.kind == "i"
        qmin, qmax = (-128, 127) if signed else (0, 255)
        z = int(zp.reshape(-1)[0]) if zp is not None else 0
        out[n.input[0]] = ((qmin - z) * scale, (qmax - z) * scale)
    if not out:
        raise ValueError(f"{onnx_path} has no QuantizeLinear with a constant scale: "
                         "not a static QDQ model")
    return out


def use_activation_observer(prepared: nn.Module, observer: str) -> nn.Module:
    """Replace, in place, every activation observer of a model prepared by torch.ao (eager
    ``prepare`` or PT2E ``prepare_pt2e``) with a fresh ``observer`` ("minmax" or "histogram")
    of the same dtype, quantization range and ``reduce_range``, before calibration: only the
    way the range is read from the images changes. Eager ``prepare`` observes weights only at
    convert; PT2E's per-channel weight observers are of another class: both are left alone."""
    import sys

    classes = {"minmax": "MinMaxObserver", "histogram": "HistogramObserver"}
    if observer not in classes:
        raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")
    swapped = 0
    for parent in list(prepared.modules()):
        for attr, child in list(parent.named_children()):
            if not (attr.startswith("activation_post_process")
                    and type(child).__name__ in classes.values()):
                continue
            # the same library's class (torch.ao's for eager, torchao's for PT2E)
            cls = getattr(sys.modules[type(child).__module__], classes[observer])
            kwargs = {"dtype": child.dtype, "qscheme": child.qscheme,
                      "reduce_range": child.reduce_range, "eps": float(child.eps)}
            if child.has_customized_qrange:   # given again with reduce_range, it would halve again
                kwargs.update(quant_min=child.quant_min, quant_max=child.quant_max,
                              reduce_range=False)
            new = cls(**kwargs)
            setattr(parent, attr, new)
            swapped += 1
    if not swapped:
        raise ValueError("no activation observer (activation_post_process*) to replace: pass a "
                         "model prepared for static quantization, e.g. quantize.eager_prepare")
    return prepared
