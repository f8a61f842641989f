"""One evaluation: which images a model gets right, for a torch module or an ONNX Runtime session.

``train.evaluate`` (accuracy during and after training) and ``measure`` (a record's accuracy
and the mask of right answers behind a paired ±) both call ``correct``, so the two can never
disagree on what "accuracy" means.
"""
from __future__ import annotations

import base64
import sys

import numpy as np
import torch

from . import data

__all__ = ["is_onnx_session", "correct", "predict_logits", "accuracy_on", "fingerprint",
           "cached_correct_mask", "correct_mask", "accuracy", "pack_mask", "unpack_mask"]


def is_onnx_session(model) -> bool:
    return hasattr(model, "get_inputs") and hasattr(model, "run")


def _run(model, x: torch.Tensor, device) -> torch.Tensor:
    if is_onnx_session(model):
        return torch.from_numpy(model.run(None, {model.get_inputs()[0].name: x.cpu().numpy()})[0])
    return model(x.to(device)).float().cpu()


def correct(model, batches, device=None, progress: bool = False,
            inference: bool = True) -> torch.Tensor:
    """Which images of ``batches`` (pairs of images and labels) the model gets right, as one bool
    vector, each batch's labels read with its predictions (two passes over a shuffled loader would
    pair them wrongly). A torch module runs in eval mode on ``device`` (by default where its
    parameters are) and is left in the mode it was in. ``inference=False`` runs under
    ``no_grad`` rather than ``inference_mode``, for a model still being trained: QAT observers
    update buffers that must stay usable by autograd. Compiled models run under inference mode,
    the mode ``runtime.compile_fixed`` compiled them in."""
    from tqdm.auto import tqdm

    onnx = is_onnx_session(model)
    if not onnx:
        device = device or next(iter(model.parameters()), torch.empty(0)).device
        was_training = model.training
        model.eval()
    out = []
    try:
        with torch.inference_mode() if inference else torch.no_grad():
            for x, y in tqdm(batches, desc="eval", leave=False, disable=not progress):
                out.append(_run(model, x, device).argmax(1) == y.cpu())
    finally:
        if not onnx and was_training:
            model.train()
    if not out:
        raise ValueError("no images to evaluate: the batches were empty")
    return torch.cat(out)


def _chunks(images: torch.Tensor, labels: torch.Tensor | None, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield (images[start:start + batch_size],
               None if labels is None else labels[start:start + batch_size])


def predict_logits(model, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits for normalised images, for a torch module or an ONNX Runtime session. Batches of 64
    are as fast here as larger ones and keep the activations, hence peak memory, small."""
    if not is_onnx_session(model):
        model = model.cpu().eval()
    with torch.inference_mode():
        return torch.cat([_run(model, x, "cpu") for x, _ in _chunks(images, None, batch_size)])


def accuracy_on(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (a fraction) on given normalised images."""
    return float(correct(model, _chunks(images, labels, 64)).float().mean())


_TORCH_PREFIXES = ("torch.nn.modules.", "torchvision.")


def fingerprint(model) -> str | None:
    """A sha256 of everything a plain module's predictions depend on: each submodule's class (and,
    for classes outside torch, its source), the printed structure, the plain attributes and every
    tensor of the state dict. ``None`` where that is not the whole story: hooks, a patched
    ``forward``, parametrizations, quantized or compiled modules, tensors off the CPU, or a graph.
    Such models are always evaluated afresh."""
    import hashlib
    import inspect

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.fx.GraphModule):
        return None
    if torch.nn.modules.module._global_forward_hooks or \
            torch.nn.modules.module._global_forward_pre_hooks:
        return None
    h = hashlib.sha256(repr(model).encode())
    for name, m in model.named_modules():
        cls = type(m)
        if m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
            return None
        where = cls.__module__ + "."
        if not where.startswith(_TORCH_PREFIXES):
            if not where.startswith("edgelab."):
                return None   # a class we cannot vouch for (the learner's own, a compiled one)
            try:   # the class and every edgelab base it inherits from
                for base in cls.__mro__:
                    if base.__module__.startswith("edgelab."):
                        h.update(inspect.getsource(base).encode())
            except (OSError, TypeError):
                return None
            public = {k: v for k, v in vars(m).items()
                      if not k.startswith("_") and k != "training"}   # correct() runs eval mode
            if not all(isinstance(v, (bool, int, float, str, tuple, type(None)))
                       for v in public.values()):
                return None   # a function or an object in an attribute: not pinned by repr
            h.update(repr(sorted(public.items())).encode())
        h.update(f"{name}:{cls.__module__}.{cls.__qualname__}".encode())
    for k, t in model.state_dict().items():
        if type(t) is not torch.Tensor or t.is_quantized or t.layout != torch.strided \
                or t.device.type != "cpu":   # a tensor subclass (torchao's) computes its own way
            return None
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _code_key() -> str:
    """What else the answers depend on: how images are split and normalised (data.py), how they
    are scored (this file), and torchvision's version (the teacher's class)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    h = hashlib.sha256()
    for module in (data, sys.modules[__name__]):
        h.update(Path(module.__file__).read_bytes())
    try:
        h.update(version("torchvision").encode())
    except PackageNotFoundError:
        pass
    return h.hexdigest()[:16]


def cached_correct_mask(model, limit: int | None = None,
                        split: str = "test") -> tuple[torch.Tensor, bool]:
    """``correct_mask`` and whether it came from ``build/cache/eval/``. When a plain module with
    the same weights was evaluated on the same images, with the same torch, thread count and
    scoring code, earlier (another notebook measured the teacher too), its answers are reused
    instead of recomputed. ``make clean`` empties the cache; ``EDGELAB_EVAL_CACHE=0`` turns it
    off."""
    import os

    from . import cache

    fp = None if os.environ.get("EDGELAB_EVAL_CACHE", "1") == "0" else fingerprint(model)
    if fp is None:
        return correct(model, data.loader(split, batch_size=64, shuffle=False, limit=limit)), False
    parts = {"model": fp, "split": split, "limit": limit, "data": sorted(data.FILES.items()),
             "torch": torch.__version__, "threads": torch.get_num_threads(), "code": _code_key()}
    where = cache.path("eval/correct", parts, ".pt")
    hit = where.is_file()
    mask = cache.cached_tensor("eval/correct", parts, lambda: correct(
        model, data.loader(split, batch_size=64, shuffle=False, limit=limit)))
    return mask, hit


def correct_mask(model, limit: int | None = None, split: str = "test") -> torch.Tensor:
    """Which of the first ``limit`` images of a split (all by default) the model gets right,
    normalised batch by batch rather than all at once (31 MB for the test set). Plain modules'
    answers are cached by their weights (``cached_correct_mask``)."""
    return cached_correct_mask(model, limit, split)[0]


def accuracy(model, limit: int | None = None, split: str = "test") -> tuple[float, int]:
    """Top-1 accuracy on the first ``limit`` images of a split, and how many images that was."""
    mask = correct_mask(model, limit, split)
    return float(mask.float().mean()), len(mask)


def pack_mask(mask: torch.Tensor) -> str:
    """A bool vector as base64 of its packed bits: 10,000 test images in 1.7 kB of JSON."""
    return base64.b64encode(np.packbits(mask.numpy().astype(bool)).tobytes()).decode()


def unpack_mask(packed: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(packed), np.uint8))[:n].astype(bool)
