"""Deployment for notebook 05 (and the bundle of 06): ONNX export and its numerical check, ONNX
Runtime latency against threads and batch size, the Raspberry Pi bundle, and its verification
on an emulated Pi CPU.

The arm64 check runs the bundle's own ``predict.py`` with the bundle's pinned onnxruntime,
numpy and Pillow (their aarch64 wheels from PyPI) in an arm64 Debian root filesystem, under
qemu user-mode emulation of the Pi 4's core (``QEMU_CPU=cortex-a72``) or the Pi 5's
(``cortex-a76``). The root filesystem is
set-up, built once by ``make pi-rootfs`` (``edgelab/pi_rootfs.py``) and cached under
``~/.cache/edgelab/``. Emulated time says nothing about a Pi's speed and is never reported as
such.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import data, measure, runtime
from .data import REPO_ROOT
from .pi_rootfs import (DEFAULT_MIRROR, HOW_TO_ENABLE, HWCAP_NAMES, PI_CPUS, PROBE,  # noqa: F401
                        QEMU_CPU, ROOTFS, SIGILL_PIN, SIGILL_SITE, Arm64Unavailable, arm64_available, build_rootfs, chroot_run,
                        debian_mirror, emulated_cpuinfo, ensure_binfmt, rootfs_ready)
from .pi_rootfs import SITE as SITE_DIR

# arm64_available is pi_rootfs's, re-exported: the notebooks ask deploy whether the Pi check runs.
__all__ = ["arm64_available", "TEMPLATE", "BUNDLE_DIR", "BUNDLE_FILES", "ExportError",
           "BundleError", "export", "check_export", "latency_grid", "labels_meta",
           "build_bundle", "check_bundle", "write_test_pngs", "run_predict", "verify_arm64",
           "PI_CPUS", "cpu_features", "illegal_instruction_check", "verify_pis", "arm64_summary"]

TEMPLATE = Path(__file__).resolve().parent / "pi_bundle"
BUNDLE_DIR = REPO_ROOT / "build" / "pi_bundle"
BUNDLE_FILES = ("model.onnx", "labels.json", "predict.py", "requirements.txt", "README.md")


class ExportError(RuntimeError):
    """A model that torch.onnx.export (dynamo) cannot capture."""


class BundleError(FileNotFoundError):
    """A Pi bundle that is incomplete or inconsistent."""


# --------------------------------------------------------------------------------------------
# Export and its numerical check
# --------------------------------------------------------------------------------------------

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
    """Run real test images through the PyTorch model and the exported file (ONNX Runtime) and
    compare: the largest logit difference and how many top-1 predictions agree. Raises
    AssertionError if the logits differ by more than ``atol``."""
    images = data.tensors("test", limit=256)[0] if images is None else images
    with torch.inference_mode():
        expected = model.cpu().eval()(images).float().numpy()
    got = measure.predict_logits(runtime.session(path), images).numpy()
    diff = float(np.abs(expected - got).max())
    same = float((expected.argmax(1) == got.argmax(1)).mean())
    result = {"images": len(images), "max_abs_diff": diff, "same_top1": same}
    if not diff <= atol:
        raise AssertionError(f"{path}: ONNX Runtime's logits differ from PyTorch's by {diff:.2e} "
                             f"(> {atol:.0e}) on {len(images)} test images: the export is wrong")
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
            med, p90 = measure.latency(sess, b, min_run_time, threads=t)
            rows.append({"threads": t, "batch": b, "median_ms": med, "p90_ms": p90,
                         "per_image_ms": med / b,
                         "settings": "onnxruntime defaults" if ort_defaults else "edgelab"})
        del sess
    return rows


# --------------------------------------------------------------------------------------------
# The bundle
# --------------------------------------------------------------------------------------------

def labels_meta(labels=data.CLASSES) -> dict:
    """labels.json: the class names, and the preprocessing predict.py must repeat."""
    return {"labels": list(labels),
            "input": {"size": [28, 28], "mode": "L (8-bit grayscale)", "mean": data.MEAN,
                      "std": data.STD, "layout": "(N, 1, 28, 28) float32, (pixel/255 - mean)/std"}}


def _model_io(path: Path) -> tuple[list, list]:
    sess = runtime.session(path, threads=1)
    return sess.get_inputs()[0].shape, sess.get_outputs()[0].shape


def build_bundle(onnx_path, out_dir=BUNDLE_DIR, *, name: str | None = None,
                 accuracy: float | None = None, test_images: int | None = None,
                 labels=data.CLASSES, notes: str = "", macs: int | None = None) -> Path:
    """Write the Raspberry Pi bundle for any ``.onnx`` classifier of (N, 1, 28, 28) images:
    model.onnx, labels.json, predict.py, requirements.txt and README.md. Built in a temporary
    folder and renamed into place, so ``out_dir`` is never half-written. ``name``, ``accuracy``
    (a fraction of ``test_images``), ``macs`` (multiply-adds per image) and ``notes`` go into the
    README."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX model at {onnx_path}; export one with "
                                f"edgelab.deploy.export(model, path, example)")
    in_shape, out_shape = _model_io(onnx_path)
    if list(in_shape[1:]) != [1, 28, 28]:
        raise ValueError(f"{onnx_path} takes input {in_shape}; the bundle's predict.py feeds "
                         "(N, 1, 28, 28) grayscale images")
    if out_shape[-1] != len(labels):
        raise ValueError(f"{onnx_path} has {out_shape[-1]} outputs but {len(labels)} labels")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        (tmp / "labels.json").write_text(json.dumps(labels_meta(labels), indent=2) + "\n")
        shutil.copyfile(TEMPLATE / "predict.py", tmp / "predict.py")
        shutil.copyfile(TEMPLATE / "requirements.txt", tmp / "requirements.txt")
        size = (tmp / "model.onnx").stat().st_size
        acc = (f"{100 * accuracy:.2f} % top-1 on {test_images or 10000:,} Fashion-MNIST test "
               "images (measured on x86 with ONNX Runtime when the bundle was built)"
               if accuracy is not None else "not recorded")
        readme = (TEMPLATE / "README.md").read_text()
        for key, value in {"NAME": name or onnx_path.stem, "BYTES": f"{size:,}",
                           "MB": f"{size / 1e6:.2f}", "ACCURACY": acc,
                           "SHA256": hashlib.sha256((tmp / "model.onnx").read_bytes()).hexdigest(),
                           "NOTES": notes.strip(), "SCALE": _scale_line(macs)}.items():
            readme = readme.replace("{{" + key + "}}", value)
        (tmp / "README.md").write_text(readme)
        os.chmod(tmp / "predict.py", 0o755)
        os.chmod(tmp, 0o755)
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


@functools.cache
def resnet18_224_macs() -> int:
    """Multiply-adds of torchvision's ResNet18 on one 224x224 colour image, counted here."""
    from torchvision.models import resnet18
    return measure.count_macs(resnet18(), (1, 3, 224, 224))


def _scale_line(macs: int | None) -> str:
    ref = resnet18_224_macs()
    if not macs:
        return (f"ResNet18 at 224×224 does {ref / 1e9:.2f} G multiply-adds per image; this "
                "model's count was not recorded")
    return (f"this model does {macs:,} multiply-adds per image, {ref / macs:.1f} times fewer than "
            f"ResNet18 at 224×224 ({ref / 1e9:.2f} G), both counted by torch's flop counter")


def check_bundle(bundle=BUNDLE_DIR) -> dict:
    """A bundle is complete: every file there, labels.json readable and matching the model's
    outputs. Returns {file: bytes}; raises BundleError naming what is missing or wrong."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"no bundle folder at {bundle}; build one with "
                          "edgelab.deploy.build_bundle(onnx_path, out_dir)")
    missing = [f for f in BUNDLE_FILES if not (bundle / f).is_file()]
    if missing:
        raise BundleError(f"bundle {bundle} is missing {', '.join(missing)} (a bundle needs "
                          f"{', '.join(BUNDLE_FILES)}); rebuild it with build_bundle()")
    try:
        labels = json.loads((bundle / "labels.json").read_text())["labels"]
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{bundle / 'labels.json'} is not a labels file ({e!r})") from e
    _, out_shape = _model_io(bundle / "model.onnx")
    if out_shape[-1] != len(labels):
        raise BundleError(f"{bundle}: model.onnx has {out_shape[-1]} outputs, labels.json "
                          f"{len(labels)} labels")
    return {f: (bundle / f).stat().st_size for f in BUNDLE_FILES}


def write_test_pngs(folder, n: int) -> tuple[list[Path], torch.Tensor]:
    """The first ``n`` test images as 8-bit grayscale PNG files (lossless: the same pixels the
    test set holds), and their labels."""
    from PIL import Image

    ds = data.load()
    images, labels = ds.test_images[:n].numpy(), ds.test_labels[:n]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = folder / f"test-{i:05d}.png"
        Image.fromarray(img, mode="L").save(p)
        paths.append(p)
    return paths, labels


def run_predict(bundle, args: list[str], python: str = sys.executable,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the bundle's predict.py with this machine's Python (the x86 side)."""
    return subprocess.run([python, str(Path(bundle) / "predict.py"), *args], capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Verified on a Pi CPU without a Pi
# --------------------------------------------------------------------------------------------

def cpu_features(hwcap: int) -> dict:
    """The HWCAP bits (asm/hwcap.h) by name, and the three that separate the Pis' cores: the
    Cortex-A72 is Armv8.0 (no LSE atomics, bit 8; no dot product, bit 20; no fp16, bits 9-10),
    the Cortex-A76 Armv8.2 with all three; neither has SVE (bit 22), which qemu's default
    CPU has."""
    return {"features": [n for i, n in enumerate(HWCAP_NAMES) if hwcap >> i & 1],
            "atomics": bool(hwcap >> 8 & 1), "dotprod": bool(hwcap >> 20 & 1),
            "fp16": bool(hwcap >> 9 & 1 and hwcap >> 10 & 1), "sve": bool(hwcap >> 22 & 1)}


def _probe(root: Path, qemu_cpu: str, work: Path) -> tuple[str, str, int, Path]:
    """Start python3 under the emulated CPU; write the /proc/cpuinfo that CPU's kernel would."""
    probe = chroot_run(root, ["/usr/bin/python3", "-c", PROBE], timeout=300, qemu_cpu=qemu_cpu)
    if probe.returncode != 0:
        raise RuntimeError(f"python3 does not start under qemu ({qemu_cpu}) in {root}:\n"
                           f"{probe.stderr[-2000:]}")
    machine, py_version, hwcap = probe.stdout.split()
    (work / "cpuinfo").write_text(emulated_cpuinfo(int(hwcap), qemu_cpu))
    return machine, py_version, int(hwcap), work / "cpuinfo"


_ORT_PROBE = """import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
x = np.zeros((1,) + tuple(d if isinstance(d, int) else 1 for d in s.get_inputs()[0].shape[1:]),
             np.float32)
s.run(None, {s.get_inputs()[0].name: x})
print(ort.__version__)
"""


def illegal_instruction_check(model_onnx, qemu_cpu: str = QEMU_CPU, root=ROOTFS) -> dict:
    """Run one inference of ``model_onnx`` under the emulated CPU twice: with the bundle's
    pinned onnxruntime, and with SIGILL_PIN, a release built with instructions the Pi 4 lacks.
    Returns {"pinned": exit code, "old": exit code, "old_version", "sigill": bool}; -4 is
    SIGILL. The test that the arm64 check can fail: on the emulated A72 the old one must die."""
    root = Path(root)
    ok, why = arm64_available(root)
    if not ok:
        raise Arm64Unavailable(why)
    ensure_binfmt()
    if not (root / SIGILL_SITE).is_dir():
        raise Arm64Unavailable(f"{root / SIGILL_SITE} is missing: rebuild with `make pi-rootfs`")
    work = Path(tempfile.mkdtemp(dir=root / "tmp", prefix="edgelab-sigill-"))
    try:
        shutil.copyfile(model_onnx, work / "model.onnx")
        (work / "probe.py").write_text(_ORT_PROBE)
        *_, cpuinfo = _probe(root, qemu_cpu, work)
        inside = "/" + str(work.relative_to(root))
        codes = {}
        for key, site in (("pinned", "/" + SITE_DIR), ("old", "/" + SIGILL_SITE)):
            run = chroot_run(root, ["/usr/bin/python3", f"{inside}/probe.py", site,
                                    f"{inside}/model.onnx"], timeout=600, cpuinfo=cpuinfo,
                             qemu_cpu=qemu_cpu)
            codes[key] = run.returncode
            codes[f"{key}_stderr"] = run.stderr.strip()[-300:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"qemu_cpu": qemu_cpu, "pinned": codes["pinned"], "old": codes["old"],
            "old_version": SIGILL_PIN.split("==")[1], "sigill": codes["old"] == -4,
            "old_stderr": codes["old_stderr"], "pinned_stderr": codes["pinned_stderr"]}


def verify_arm64(bundle=BUNDLE_DIR, images: int = 300, root=ROOTFS, threads: int = 1,
                 timeout: float = 1200, qemu_cpu: str = QEMU_CPU) -> dict:
    """Run the bundle's own predict.py on the first ``images`` test images (written as PNG
    files) in the arm64 root filesystem under qemu with ``QEMU_CPU=qemu_cpu`` (cortex-a72, the
    Pi 4's core, or cortex-a76, the Pi 5's), and compare its top-1 predictions with x86 ONNX
    Runtime on the same test images.

    Returns {"images", "mismatches", "match", "max_abs_logit_diff", "machine", "onnxruntime",
    "python", "cpu": {...}, "emulated_seconds"}; raises Arm64Unavailable (with how to enable it)
    when this machine cannot emulate, RuntimeError when predict.py fails under emulation.
    ``emulated_seconds`` is the wall time under emulation on this machine: not a Pi's time."""
    bundle, root = Path(bundle), Path(root)
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    check_bundle(bundle)
    ok, why = arm64_available(root)
    if not ok:
        raise Arm64Unavailable(why)
    ensure_binfmt()
    x, _ = data.tensors("test", limit=images)
    x86 = runtime.session(bundle / "model.onnx", threads=1)
    reference = measure.predict_logits(x86, x).numpy()
    work = Path(tempfile.mkdtemp(dir=root / "tmp", prefix="edgelab-verify-"))
    try:
        for f in BUNDLE_FILES:
            shutil.copyfile(bundle / f, work / f)
        write_test_pngs(work / "images", images)
        inside = "/" + str(work.relative_to(root))
        machine, py_version, hwcap, cpuinfo = _probe(root, qemu_cpu, work)
        t0 = time.perf_counter()
        run = chroot_run(root, ["/usr/bin/python3", f"{inside}/predict.py", "--json",
                                "--threads", str(threads), f"{inside}/images"], timeout=timeout,
                         cpuinfo=cpuinfo, qemu_cpu=qemu_cpu)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if run.returncode != 0:
        raise RuntimeError(f"the bundle's predict.py failed under arm64 emulation "
                           f"(exit {run.returncode}):\n{run.stderr[-3000:]}")
    out = json.loads(run.stdout)
    preds = out["predictions"]
    if len(preds) != images:
        raise RuntimeError(f"predict.py returned {len(preds)} predictions for {images} images")
    arm_logits = np.array([p["logits"] for p in preds], dtype=np.float32)
    arm_top1 = np.array([p["index"] for p in preds])
    mismatches = int((arm_top1 != reference.argmax(1)).sum())
    return {
        "images": images, "mismatches": mismatches, "match": mismatches == 0,
        "max_abs_logit_diff": float(np.abs(arm_logits - reference).max()),
        "machine": out["machine"], "onnxruntime": out["onnxruntime"], "python": py_version,
        "cpu": {"qemu_cpu": qemu_cpu, "probe_machine": machine, **cpu_features(hwcap)},
        "stderr": run.stderr.strip(),
        "emulated_seconds": seconds,
    }


def verify_pis(bundle=BUNDLE_DIR, images: int = 300, root=ROOTFS) -> dict[str, dict]:
    """``verify_arm64`` on each Raspberry Pi's core in turn (PI_CPUS), keyed by the QEMU CPU."""
    return {cpu: verify_arm64(bundle, images, root, qemu_cpu=cpu) for cpu in PI_CPUS.values()}


def arm64_summary(res: dict) -> str:
    """One line of a ``verify_arm64`` result: which core, and how the predictions compare."""
    board = next((b for b, c in PI_CPUS.items() if c == res["cpu"]["qemu_cpu"]), "emulated")
    return (f"{board} ({res['cpu']['qemu_cpu']}), onnxruntime {res['onnxruntime']}: "
            f"{res['images'] - res['mismatches']} of {res['images']} predictions equal x86's, "
            f"largest logit difference {res['max_abs_logit_diff']:.1e}")


def main(argv=None) -> int:
    """``python -m edgelab.deploy verify [BUNDLE] [--images N] [--cpu cortex-a76]``: the arm64
    check from a shell."""
    p = argparse.ArgumentParser(prog="python -m edgelab.deploy",
                                description="run a bundle's predict.py on the emulated Pi CPU")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="run a bundle's predict.py on the emulated Pi CPU")
    v.add_argument("bundle", nargs="?", type=Path, default=BUNDLE_DIR)
    v.add_argument("--images", type=int, default=300)
    v.add_argument("--root", type=Path, default=ROOTFS)
    v.add_argument("--cpu", choices=sorted(PI_CPUS.values()), default=QEMU_CPU,
                   help="the emulated core: cortex-a72 (Pi 4, the default) or cortex-a76 (Pi 5)")
    args = p.parse_args(argv)
    try:
        res = verify_arm64(args.bundle, args.images, args.root, qemu_cpu=args.cpu)
    except (Arm64Unavailable, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=2))
    return 0 if res["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
