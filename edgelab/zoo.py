"""Models from elsewhere, for notebook 07: a torchvision architecture adapted to this data, or the
learner's own model from a Python file and a safetensors file."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch.nn as nn

from .data import CLASSES, INPUT_SHAPE

__all__ = ["torchvision_names", "first_conv", "torchvision_model", "load_own_model"]


def torchvision_names() -> list[str]:
    """torchvision's image classifiers, the names ``torchvision_model`` accepts."""
    import torchvision
    return sorted(torchvision.models.list_models(module=torchvision.models))


def first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The first Conv2d in registration order: (its parent, its attribute name, the conv)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, name, child
    raise ValueError(f"{type(model).__name__} has no Conv2d to take the images")


def torchvision_model(name: str, in_channels: int = INPUT_SHAPE[0],
                      num_classes: int = len(CLASSES), stem_stride: int | None = 1) -> nn.Module:
    """An untrained torchvision classifier (no download: weights are never fetched) whose first
    convolution takes ``in_channels`` and whose head has ``num_classes`` outputs.

    ImageNet models shrink a 224-pixel image 32 times; ``stem_stride=1`` makes the first
    convolution keep the resolution, so a 28x28 image still has 2x2 positions at the end."""
    import torchvision

    known = torchvision_names()
    if name not in known:
        raise ValueError(f"{name!r} is not one of torchvision's classifiers; pick one of "
                         f"{', '.join(known)}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    parent, attr, conv = first_conv(model)
    stride = conv.stride if stem_stride is None else (stem_stride, stem_stride)
    setattr(parent, attr, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride,
                                    conv.padding, conv.dilation, conv.groups,
                                    conv.bias is not None))
    return model


def load_own_model(py_file, weights=None, factory: str = "build_model") -> nn.Module:
    """``factory()`` from the learner's ``py_file``, then, if given, its weights from a
    safetensors file (tensors only: loading them runs no code).

    The Python file *is* code and runs on import, with your permissions: use your own file or
    one you trust. A missing factory, or weights that do not fit the model, are one clear error."""
    from safetensors.torch import load_file

    py_file = Path(py_file)
    if not py_file.is_file():
        raise FileNotFoundError(f"no Python file at {py_file}: it must define {factory}() "
                                "returning your nn.Module")
    spec = importlib.util.spec_from_file_location(f"edgelab_own_{py_file.stem}", py_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, factory, None)):
        raise AttributeError(f"{py_file} defines no function {factory}(); it must return your "
                             "nn.Module (untrained is fine: weights come from the safetensors file)")
    model = getattr(module, factory)()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{factory}() in {py_file} returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        weights = Path(weights)
        if weights.suffix != ".safetensors":
            raise ValueError(f"{weights}: weights load from a .safetensors file only (a pickle "
                             "can run code); save yours with safetensors.torch.save_file("
                             "model.state_dict(), 'weights.safetensors')")
        missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights} does not fit {factory}()'s model: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
