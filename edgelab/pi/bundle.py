"""The Raspberry Pi bundle: one folder that runs on its own (model.onnx, labels.json, predict.py,
requirements.txt, README.md), for any image classifier.

``labels.json`` carries the class names and the input spec (channels, height, width, per-channel
mean and std), read from the model's example input when the bundle is built; ``predict.py``
reads it, so one preprocessing path and one command line serve every model, and the script and
the model cannot drift apart. On the Pi it needs only onnxruntime, numpy and Pillow.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .. import counts, data, deploy, evaluation, paths, runtime
from . import TEMPLATE

__all__ = ["BUNDLE_FILES", "MODES", "FASHION_MNIST", "BundleError", "input_spec",
           "build", "check", "read_meta", "sample_pixels", "write_pngs", "write_test_pngs",
           "run_predict", "load_predict", "predict_here"]

BUNDLE_FILES = ("model.onnx", "labels.json", "predict.py", "requirements.txt", "README.md")
MODES = {1: "L", 3: "RGB"}   # channels -> the Pillow mode predict.py converts every image to


class BundleError(FileNotFoundError):
    """A Pi bundle that is incomplete or inconsistent."""


def _per_channel(value, channels: int, what: str) -> list[float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ValueError(f"{what} has {len(values)} values for a {channels}-channel input: give "
                         f"one number, or one per channel")
    return values


def input_spec(example, mean=None, std=None) -> dict:
    """What predict.py makes from an image file: ``example`` is an example input batch (its
    shape after the batch axis is read) or a (channels, height, width) tuple. ``mean`` and
    ``std``: one number or one per channel, on the 0..1 pixel scale; a one-channel input
    defaults to Fashion-MNIST's, any other needs them (mean=0, std=1 for no normalisation)."""
    shape = tuple(example.shape[1:]) if isinstance(example, torch.Tensor) else tuple(example)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"the bundle serves image models: the input must be (N, channels, "
                         f"height, width) with fixed sizes, got (N, {', '.join(map(str, shape))})")
    channels, height, width = shape
    if channels not in MODES:
        raise ValueError(f"predict.py reads images as grayscale (1 channel) or RGB (3 channels); "
                         f"this input has {channels}")
    if mean is None and std is None and channels == 1:
        mean, std = data.MEAN, data.STD
    if mean is None or std is None:
        raise ValueError(f"a {channels}-channel input needs mean= and std=, the per-channel "
                         "normalisation the model was trained with (mean=0, std=1 for none); "
                         f"only a one-channel input defaults to Fashion-MNIST's ({data.MEAN}, "
                         f"{data.STD})")
    mean, std = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return {"channels": channels, "height": height, "width": width, "mode": MODES[channels],
            "mean": mean, "std": std,
            "layout": f"(N, {channels}, {height}, {width}) float32, (pixel / 255 - mean) / std "
                      "per channel"}


FASHION_MNIST = input_spec((1, 28, 28))


def _words(spec: dict) -> str:
    return f"{spec['width']}×{spec['height']} {'grayscale' if spec['channels'] == 1 else 'RGB'}"


def _model_io(path: Path) -> tuple[list, list]:
    sess = runtime.session(path, threads=1)
    return sess.get_inputs()[0].shape, sess.get_outputs()[0].shape


def build(model, out_dir=None, example: torch.Tensor | None = None, *,
          mean=None, std=None, labels=data.CLASSES, dataset: str = "Fashion-MNIST",
          name: str | None = None, accuracy: float | None = None, test_images: int | None = None,
          notes: str = "", macs: int | None = None) -> Path:
    """Write the bundle for ``model``: an ``.onnx`` file, or an nn.Module with an ``example``
    input batch (exported with deploy.export). The input spec comes from the model's input
    shape (and ``mean``, ``std``: see input_spec); ``labels`` must match its outputs. ``name``,
    ``accuracy`` (a fraction of ``test_images`` of ``dataset``), ``macs`` (multiply-adds per
    image) and ``notes`` go into the README. Built in a temporary folder and renamed into place,
    so ``out_dir`` (default build/pi_bundle, edgelab.paths.bundle_dir()) is never half-written."""
    out_dir = Path(out_dir or paths.bundle_dir())
    if isinstance(model, nn.Module):
        if example is None:
            raise TypeError("build(model, out_dir, example): a torch model needs an example "
                            "input batch to be exported (or pass an .onnx file)")
        stem = type(model).__name__
    elif not Path(model).is_file():
        raise FileNotFoundError(f"no ONNX model at {model}; pass an nn.Module and an example, "
                                "or export one with edgelab.deploy.export(model, path, example)")
    else:
        stem = Path(model).stem
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        if isinstance(model, nn.Module):
            deploy.export(model, tmp / "model.onnx", example)
        else:
            shutil.copyfile(model, tmp / "model.onnx")
        in_shape, out_shape = _model_io(tmp / "model.onnx")
        if example is not None and list(in_shape[1:]) != list(example.shape[1:]):
            raise ValueError(f"the model takes (N, {', '.join(map(str, in_shape[1:]))}), the "
                             f"example is {tuple(example.shape)}")
        spec = input_spec(in_shape[1:], mean, std)
        if out_shape[-1] != len(labels):
            raise ValueError(f"the model has {out_shape[-1]} outputs but {len(labels)} labels; "
                             "pass labels=[...] with one name per output")
        meta = {"labels": list(labels), "input": spec}
        _write_files(tmp, meta, dataset, name or stem, accuracy, test_images, notes, macs)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_files(tmp: Path, meta: dict, dataset: str, name: str, accuracy, test_images, notes,
                 macs) -> None:
    spec = meta["input"]
    (tmp / "labels.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in ("predict.py", "requirements.txt"):
        shutil.copyfile(TEMPLATE / f, tmp / f)
    size = (tmp / "model.onnx").stat().st_size
    acc = (f"{100 * accuracy:.2f} % top-1 on {test_images or 10000:,} {dataset} test images "
           "(measured on x86 with ONNX Runtime when the bundle was built)"
           if accuracy is not None else "not recorded")
    if spec == FASHION_MNIST:
        expects = ("One garment per image, centred, light on a dark background, like the "
                   "Fashion-MNIST images it was trained on; a photo of a dark garment on a white "
                   "background needs `--invert`. Test images to try: on the machine with the "
                   "workbook, `python -c \"from edgelab.pi import bundle; "
                   "bundle.write_test_pngs('test_pngs', 20)\"` writes the first 20 Fashion-MNIST "
                   "test images as PNG files; copy the folder over like the bundle.")
    else:
        expects = (f"Images like the {dataset} images it was trained on; `--invert` inverts the "
                   "pixels first, for an object photographed the other way round.")
    readme = (TEMPLATE / "README.md").read_text()
    for key, value in {"NAME": name, "DATASET": dataset, "BYTES": f"{size:,}",
                       "MB": f"{size / 1e6:.2f}", "ACCURACY": acc,
                       "CLASSES": str(len(meta["labels"])),
                       "INPUT": _words(spec), "EXPECTS": expects,
                       "SHA256": hashlib.sha256((tmp / "model.onnx").read_bytes()).hexdigest(),
                       "NOTES": notes.strip(), "SCALE": _scale_line(macs)}.items():
        readme = readme.replace("{{" + key + "}}", value)
    (tmp / "README.md").write_text(readme)
    os.chmod(tmp / "predict.py", 0o755)
    os.chmod(tmp, 0o755)


@functools.cache
def resnet18_224_macs() -> int:
    """Multiply-adds of torchvision's ResNet18 on one 224x224 colour image, counted here."""
    from torchvision.models import resnet18
    return counts.count_macs(resnet18(), (1, 3, 224, 224))


def _scale_line(macs: int | None) -> str:
    ref = resnet18_224_macs()
    if not macs:
        return (f"ResNet18 at 224×224 does {ref / 1e9:.2f} G multiply-adds per image; this "
                "model's count was not recorded")
    return (f"this model does {macs:,} multiply-adds per image, {ref / macs:.1f} times fewer than "
            f"ResNet18 at 224×224 ({ref / 1e9:.2f} G), both counted by torch's flop counter")


def read_meta(bundle) -> dict:
    """A bundle's labels.json: {"labels": [...], "input": input_spec}; BundleError if unreadable."""
    path = Path(bundle) / "labels.json"
    try:
        meta = json.loads(path.read_text())
        spec = meta["input"]
        input_spec((spec["channels"], spec["height"], spec["width"]), spec["mean"], spec["std"])
        if not isinstance(meta["labels"], list):
            raise TypeError("'labels' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{path} is not a bundle's labels file ({e!r}); rebuild the bundle "
                          "with edgelab.pi.bundle.build()") from e
    return meta


def check(bundle=None) -> dict:
    """A bundle is complete: every file there, labels.json readable and matching the model's
    input and outputs. Returns {file: bytes}; raises BundleError naming what is missing or
    wrong. ``bundle``: default build/pi_bundle."""
    bundle = Path(bundle or paths.bundle_dir())
    if not bundle.is_dir():
        raise BundleError(f"no bundle folder at {bundle}; build one with "
                          "edgelab.pi.bundle.build(model, out_dir, example)")
    missing = [f for f in BUNDLE_FILES if not (bundle / f).is_file()]
    if missing:
        raise BundleError(f"bundle {bundle} is missing {', '.join(missing)} (a bundle needs "
                          f"{', '.join(BUNDLE_FILES)}); rebuild it with build()")
    meta = read_meta(bundle)
    spec = meta["input"]
    in_shape, out_shape = _model_io(bundle / "model.onnx")
    if list(in_shape[1:]) != [spec["channels"], spec["height"], spec["width"]]:
        raise BundleError(f"{bundle}: model.onnx takes (N, {', '.join(map(str, in_shape[1:]))}), "
                          f"labels.json says {spec['layout']}")
    if out_shape[-1] != len(meta["labels"]):
        raise BundleError(f"{bundle}: model.onnx has {out_shape[-1]} outputs, labels.json "
                          f"{len(meta['labels'])} labels")
    return {f: (bundle / f).stat().st_size for f in BUNDLE_FILES}


def sample_pixels(spec: dict, n: int) -> np.ndarray:
    """``n`` 8-bit images of the spec's size to check a bundle on: Fashion-MNIST's first test
    images for a 1x28x28 input, fixed pseudo-random pixels otherwise (a check that two machines
    agree needs the same images on both, not a data set)."""
    c, h, w = spec["channels"], spec["height"], spec["width"]
    if (c, h, w) == (1, 28, 28):
        return data.load().test_images[:n].numpy()
    shape = (n, h, w) if c == 1 else (n, h, w, c)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def write_pngs(folder, pixels: np.ndarray, prefix: str = "image") -> list[Path]:
    """8-bit images, (N, H, W) grayscale or (N, H, W, 3) RGB, as PNG files (lossless: the same
    pixels come back)."""
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or not (pixels.ndim == 3 or pixels.ndim == 4
                                        and pixels.shape[-1] == 3):
        raise ValueError(f"pixels must be uint8 (N, H, W) or (N, H, W, 3), got {pixels.dtype} "
                         f"{pixels.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(pixels):
        paths.append(folder / f"{prefix}-{i:05d}.png")
        Image.fromarray(img, mode="L" if img.ndim == 2 else "RGB").save(paths[-1])
    return paths


def write_test_pngs(folder, n: int) -> tuple[list[Path], torch.Tensor]:
    """The first ``n`` Fashion-MNIST test images as 8-bit grayscale PNG files, and their labels."""
    ds = data.load()
    return write_pngs(folder, ds.test_images[:n].numpy(), prefix="test"), ds.test_labels[:n]


def run_predict(bundle, args: list[str], python: str = sys.executable,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the bundle's predict.py with this machine's Python (the x86 side)."""
    return subprocess.run([python, str(Path(bundle) / "predict.py"), *args], capture_output=True,
                          text=True, timeout=timeout)


def load_predict(bundle=None):
    """A bundle's predict.py (the template's when ``bundle`` is None) imported in this process,
    to call its preprocessing directly."""
    path = (Path(bundle) if bundle is not None else TEMPLATE) / "predict.py"
    spec = importlib.util.spec_from_file_location("edgelab_bundle_predict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def predict_here(bundle, files) -> np.ndarray:
    """The logits predict.py computes for ``files``, here: its own preprocessing, then this
    machine's ONNX Runtime (one thread). The x86 side of the arm64 check."""
    meta, predict = read_meta(bundle), load_predict(bundle)
    x = np.stack([predict.preprocess(Path(f), meta) for f in files])
    return evaluation.predict_logits(runtime.session(Path(bundle) / "model.onnx", threads=1),
                                  torch.from_numpy(x)).numpy()
