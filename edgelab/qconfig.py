"""One quantization verb over the flows: ``quantize(model, QuantConfig(...), images)``.

The layering follows torchao's: the numbers (``edgelab.qmath``) → a granularity (one scale per
tensor or per output channel) → a config naming the flow, the granularity and the bits → one
verb that runs the flow. The flows themselves live in ``edgelab.quantize`` (PyTorch) and
``edgelab.runtime`` (ONNX Runtime); this module only says which one and checks that it applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["GRANULARITIES", "BACKENDS", "granularity", "QuantConfig", "quantize"]

GRANULARITIES = ("per-tensor", "per-channel")
# dynamic: int8 weights, activations scaled at run time (Linear layers only in PyTorch)
# eager: torch.ao's eager static flow (needs the model's code edited: the workbook's ResNet18 only)
# pt2e: torchao's export-based static flow, any model torch.export can trace
# onnxruntime: export to ONNX, then ONNX Runtime's static QDQ quantization, any exportable model
BACKENDS = ("dynamic", "eager", "pt2e", "onnxruntime")


def granularity(value) -> str:
    """The one name for where scales are kept: ``True``/``"per-channel"``/``0`` (an output-channel
    axis) mean per channel, ``False``/``"per-tensor"``/``None`` per tensor."""
    if value is True or value == "per-channel" or (type(value) is int and value == 0):
        return "per-channel"
    if value is False or value is None or value == "per-tensor":
        return "per-tensor"
    raise ValueError(f"granularity is one of {GRANULARITIES} (or True/False for per channel, or "
                     f"the output-channel axis 0), got {value!r}")


@dataclass(frozen=True)
class QuantConfig:
    """Which flow, how fine the weight scales are, how many bits they hold, and (static flows)
    how activation ranges are read from the calibration images."""
    backend: str = "onnxruntime"
    granularity: str = "per-channel"
    bits: int = 8
    calibration: str = "minmax"

    def __post_init__(self):
        from .qmath import check_bits
        from .runtime import CALIBRATIONS

        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        object.__setattr__(self, "granularity", granularity(self.granularity))
        check_bits(self.bits)
        if self.bits != 8 and self.backend != "eager":
            raise ValueError(f"the {self.backend} flow stores int8 weights only; bits={self.bits} "
                             "needs backend='eager' (2-8 bit weights in int8 storage) or "
                             "qmath.quantize_dequantize for an accuracy-only simulation")
        if self.bits > 8:
            raise ValueError(f"int8 kernels hold at most 8-bit weights, got bits={self.bits}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got "
                             f"{self.calibration!r}")
        if self.backend != "onnxruntime" and self.calibration != "minmax":
            raise ValueError(f"calibration={self.calibration!r} is ONNX Runtime's; the "
                             f"{self.backend} flow uses its own observers: leave it 'minmax'")
        if self.backend == "pt2e" and self.granularity != "per-channel":
            raise ValueError("the x86 Inductor quantizer's int8 kernels take per-channel weights;"
                             " use granularity='per-channel' or backend='onnxruntime'")
        if self.backend == "dynamic" and self.granularity != "per-tensor":
            raise ValueError("PyTorch's dynamic flow keeps one scale per tensor here; use "
                             "granularity='per-tensor'")


def quantize(model: nn.Module, config: QuantConfig, images: torch.Tensor | None = None,
             example: torch.Tensor | None = None, out: str | Path | None = None):
    """``model`` quantized by ``config``'s flow: a module (dynamic, eager, pt2e) or the path of
    the int8 ``.onnx`` file (onnxruntime, written to ``out``). Static flows calibrate on
    ``images``; ``example`` (default: two of ``images``) gives the input shape to trace. The model
    is never changed in place."""
    from . import quantize as flows

    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    per_channel = config.granularity == "per-channel"
    if config.backend == "dynamic":
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("dynamic quantization has PyTorch kernels for Linear layers only, "
                             "and this model has none: it would come back unchanged. Use a "
                             "static flow (backend='pt2e' or 'onnxruntime')")
        return flows.dynamic(model, layers=(nn.Linear,))
    if images is None:
        raise ValueError(f"the {config.backend} flow is static: pass calibration images "
                         "(a few hundred training images, e.g. data.calibration_set())")
    example = images[:2] if example is None else example
    if config.backend == "eager":
        try:
            return flows.eager_static(model, images, per_channel, weight_bits=config.bits)
        except (RuntimeError, KeyError, AttributeError) as e:
            raise ValueError("the eager flow needs the model's code edited (QuantStub, "
                             "FloatFunctional for each add, one ReLU per use); edgelab has that "
                             "edit for the workbook's ResNet18 only. For any other model use "
                             f"backend='pt2e' or 'onnxruntime' ({type(e).__name__}: {e})") from e
    if config.backend == "pt2e":
        return flows.pt2e_static(model, images, example)
    from .deploy import export
    from .runtime import ort_static

    if out is None:
        raise ValueError("backend='onnxruntime' writes a file: pass out='<path>.onnx'")
    out = Path(out)
    fp32 = out.with_name(out.stem + "-fp32.onnx")
    export(model, fp32, example)
    return ort_static(fp32, out, images, per_channel=per_channel, calibration=config.calibration)
