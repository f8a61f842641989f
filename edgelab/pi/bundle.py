"""The Raspberry Pi bundle: one folder that runs on its own (the model file, labels.json,
predict.py, requirements.txt, README.md), for any image classifier, in any of three runtimes:
model.onnx (ONNX Runtime), model.tflite (LiteRT) or model.pte (ExecuTorch, with et_runner.cpp:
its C++ runner, which predict.py builds once on the machine, so the Pi needs no torch).

``labels.json`` carries the class names and the input spec (channels, height, width, per-channel
mean and std), read from the model's example input when the bundle is built; ``predict.py``
reads it, so one preprocessing path and one command line serve every model, and the script and
the model cannot drift apart. On the Pi it needs only its runtime, numpy and Pillow
(``requirements-<runtime>.txt`` of the template, copied as requirements.txt).
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

from .. import counts, data, deploy, paths, runtime
from . import TEMPLATE

__all__ = ["BUNDLE_FILES", "MODEL_FILES", "EXTRA_FILES", "MODES", "FASHION_MNIST", "BundleError",
           "input_spec",
           "bundle_files", "requirements_file",
           "build", "check", "read_meta", "sample_pixels", "write_pngs", "write_test_pngs",
           "run_predict", "load_predict", "predict_here"]

BUNDLE_FILES = ("model.onnx", "labels.json", "predict.py", "requirements.txt", "README.md")
# the runtime -> the model file its bundle ships (a file's suffix names its runtime)
MODEL_FILES = {"onnxruntime": "model.onnx", "litert": "model.tflite", "executorch": "model.pte"}
_NEEDS = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert (LiteRT)",
          "executorch": "the executorch wheel's C++ libraries (no torch) and g++ once"}
# files a runtime's bundle has besides BUNDLE_FILES
EXTRA_FILES = {"onnxruntime": (), "litert": (), "executorch": ("et_runner.cpp",)}


def bundle_files(runtime: str = "onnxruntime") -> tuple[str, ...]:
    """The files of a bundle for ``runtime``: BUNDLE_FILES with its model file (and, for
    ExecuTorch, the C++ runner's source predict.py builds)."""
    if runtime not in MODEL_FILES:
        raise ValueError(f"runtime must be one of {sorted(MODEL_FILES)}, got {runtime!r}")
    return (MODEL_FILES[runtime],) + BUNDLE_FILES[1:] + EXTRA_FILES[runtime]


def requirements_file(runtime: str = "onnxruntime") -> Path:
    """The template's pinned requirements for ``runtime``'s bundle."""
    bundle_files(runtime)
    return TEMPLATE / ("requirements.txt" if runtime == "onnxruntime"
                       else f"requirements-{runtime}.txt")


def _runtime_of(path: Path) -> str:
    for runtime, name in MODEL_FILES.items():
        if Path(path).suffix == Path(name).suffix:
            return runtime
    raise ValueError(f"{path}: a bundle's model is .onnx (ONNX Runtime), .tflite (LiteRT) or "
                     ".pte (ExecuTorch, exported for batch 1 by edgelab.edge.export)")
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
    """The model file's input shape and output shape, read by this machine's runtime."""
    if _runtime_of(path) == "onnxruntime":
        sess = runtime.session(path, threads=1)
        return sess.get_inputs()[0].shape, sess.get_outputs()[0].shape
    from .. import edge

    sess = edge.session(path)
    shape = sess.get_inputs()[0].shape
    x = np.zeros([sess.batches[0], *shape[1:]], np.float32)
    return shape, list(sess.run(None, {"x": x})[0].shape)


def build(model, out_dir=None, example: torch.Tensor | None = None, *,
          mean=None, std=None, labels=data.CLASSES, dataset: str = "Fashion-MNIST",
          name: str | None = None, accuracy: float | None = None, test_images: int | None = None,
          notes: str = "", macs: int | None = None) -> Path:
    """Write the bundle for ``model``: an nn.Module with an ``example`` input batch (exported
    to ONNX with deploy.export), or a model file: ``.onnx`` (ONNX Runtime), ``.tflite`` (LiteRT)
    or ``.pte`` (ExecuTorch) of batch 1, as edgelab.edge.export writes; its suffix picks the
    runtime and so the requirements. The input spec comes from the model's input
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
        raise FileNotFoundError(f"no model file at {model}; pass an nn.Module and an example, "
                                "or export one with edgelab.deploy.export(model, path, example) "
                                "or edgelab.edge.export")
    else:
        stem = Path(model).stem
    rt = "onnxruntime" if isinstance(model, nn.Module) else _runtime_of(Path(model))
    model_file = MODEL_FILES[rt]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        if isinstance(model, nn.Module):
            deploy.export(model, tmp / model_file, example)
        else:
            shutil.copyfile(model, tmp / model_file)
        in_shape, out_shape = _model_io(tmp / model_file)
        if example is not None and list(in_shape[1:]) != list(example.shape[1:]):
            raise ValueError(f"the model takes (N, {', '.join(map(str, in_shape[1:]))}), the "
                             f"example is {tuple(example.shape)}")
        spec = input_spec(in_shape[1:], mean, std)
        if out_shape[-1] != len(labels):
            raise ValueError(f"the model has {out_shape[-1]} outputs but {len(labels)} labels; "
                             "pass labels=[...] with one name per output")
        meta = {"labels": list(labels), "input": spec, "runtime": rt, "model": model_file}
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
    spec, rt, model_file = meta["input"], meta["runtime"], meta["model"]
    (tmp / "labels.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.copyfile(TEMPLATE / "predict.py", tmp / "predict.py")
    shutil.copyfile(requirements_file(rt), tmp / "requirements.txt")
    for extra in EXTRA_FILES[rt]:
        shutil.copyfile(TEMPLATE / extra, tmp / extra)
    size = (tmp / model_file).stat().st_size
    acc = (f"{100 * accuracy:.2f} % top-1 on {test_images or 10000:,} {dataset} test images "
           f"(measured on x86 with {rt} when the bundle was built)"
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
                       "SHA256": hashlib.sha256((tmp / model_file).read_bytes()).hexdigest(),
                       "MODEL": model_file, "RUNTIME": rt, "NEEDS": _NEEDS[rt],
                       "PIP": ("pip install --no-deps -r requirements.txt" if rt == "executorch"
                               else "pip install -r requirements.txt"),
                       "WHEELS": _wheels_line(rt), "RUNTIME_NOTE": _RUNTIME_NOTES[rt],
                       "FILE_ROWS": _FILE_ROWS[rt],
                       "NOTES": notes.strip(), "SCALE": _scale_line(macs)}.items():
        readme = readme.replace("{{" + key + "}}", value)
    (tmp / "README.md").write_text(readme)
    os.chmod(tmp / "predict.py", 0o755)
    os.chmod(tmp, 0o755)


_RUNTIME_NOTES = {
    "onnxruntime": "", "litert": "",
    "executorch": (
        "\n\n   The model runs on ExecuTorch's C++ runtime, the shared libraries the executorch "
        "wheel\n   ships (no torch: ExecuTorch's Python runtime would need it, and PyPI's aarch64 "
        "torch\n   is a CUDA build). On its first run predict.py compiles `et_runner.cpp` "
        "against them with\n   g++ (`sudo apt install g++` if `g++ --version` fails) and keeps "
        "the program in\n   `~/.cache/edgelab-pi/`; ExecuTorch's own C++ guide: "
        "<https://docs.pytorch.org/executorch/stable/extension-module.html>."),
}
_FILE_ROWS = {
    "onnxruntime": "", "litert": "",
    "executorch": ("\n| `et_runner.cpp` | the C++ program predict.py builds once with g++ to "
                   "run the model on ExecuTorch's runtime (no Python inside) |"),
}


def _wheels_line(rt: str) -> str:
    """The aarch64 wheels' total size, as `make pi-rootfs` recorded it (pi.rootfs.wheel_bytes)."""
    from .rootfs import wheel_bytes

    total = wheel_bytes().get(rt)
    return (f"{total / 1e6:.0f} MB of aarch64 wheels for Python 3.11, as downloaded by "
            "`make pi-rootfs`" if total else "the aarch64 wheels' size was not recorded here")


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
        meta.setdefault("runtime", "onnxruntime")   # bundles before LiteRT and ExecuTorch
        meta.setdefault("model", MODEL_FILES.get(meta["runtime"], "model.onnx"))
        bundle_files(meta["runtime"])
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
    meta = (read_meta(bundle) if (bundle / "labels.json").is_file()
            else {"model": "model.onnx", "runtime": "onnxruntime"})
    files = (meta["model"],) + BUNDLE_FILES[1:] + EXTRA_FILES[meta["runtime"]]
    missing = [f for f in files if not (bundle / f).is_file()]
    if missing:
        raise BundleError(f"bundle {bundle} is missing {', '.join(missing)} (a bundle needs "
                          f"{', '.join(files)}); rebuild it with build()")
    spec, model_file = meta["input"], meta["model"]
    in_shape, out_shape = _model_io(bundle / model_file)
    if list(in_shape[1:]) != [spec["channels"], spec["height"], spec["width"]]:
        raise BundleError(f"{bundle}: {model_file} takes (N, "
                          f"{', '.join(map(str, in_shape[1:]))}), labels.json says "
                          f"{spec['layout']}")
    if out_shape[-1] != len(meta["labels"]):
        raise BundleError(f"{bundle}: {model_file} has {out_shape[-1]} outputs, labels.json "
                          f"{len(meta['labels'])} labels")
    return {f: (bundle / f).stat().st_size for f in files}


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
    """The logits predict.py computes for ``files``, here: its own preprocessing and its own
    model call (predict.Model, one thread), in this machine's runtime. The x86 side of the
    arm64 check."""
    from ..edge import quiet

    meta, predict = read_meta(bundle), load_predict(bundle)
    with quiet():   # LiteRT logs its delegate from C++; a first ExecuTorch run notes its build
        model = predict.Model(Path(bundle) / meta["model"], threads=1)
    x = np.stack([predict.preprocess(Path(f), meta) for f in files])
    try:
        return np.concatenate([model.run(x[i:i + 64]) for i in range(0, len(x), 64)])
    finally:
        model.close()
