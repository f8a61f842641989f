#!/usr/bin/env python3
"""Classify images with the bundled model (the classes listed in labels.json).

The model is one file, run by one edge runtime: model.onnx by ONNX Runtime, model.tflite by
LiteRT (ai-edge-litert), model.pte by ExecuTorch's C++ runtime (through et_runner.cpp, which
predict.py compiles once with g++); labels.json names which. Besides that runtime it needs only
numpy and Pillow (requirements.txt), so it runs on a Raspberry Pi (or any machine) with nothing
but this folder. Examples:

    python predict.py shirt.png boot.jpg      # one line per image: file, class, confidence
    python predict.py photos/                 # every image file in a folder
    python predict.py --json photos/          # machine-readable, with the logits
    python predict.py --benchmark             # latency of the model on this machine

labels.json says what the model takes: the image size, grayscale (1 channel) or RGB (3), and the
per-channel mean and standard deviation of its training images. Every image becomes exactly
that: other sizes are resized and other colour modes converted, with a note; ``--invert`` for a
dark object photographed on a light background when the training images were the other way round.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm",
                  ".ppm"}


# channels -> (Pillow mode, in words)
MODES = {1: ("L", "grayscale"), 3: ("RGB", "RGB")}


class InputError(Exception):
    """Bad input, or a missing prerequisite (a compiler, a wheel): one line, exit status 2."""


def load_labels(path: Path) -> dict:
    """labels.json: the class names and the input spec (channels, height, width, mean, std)."""
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no labels file at {path}: predict.py needs labels.json next to it")
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e})")
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), list):
        raise InputError(f"{path} must hold an object with a 'labels' list")
    spec = meta.get("input")
    keys = ("channels", "height", "width", "mean", "std")
    if not isinstance(spec, dict) or any(k not in spec for k in keys):
        raise InputError(f"{path} must hold an 'input' object with {', '.join(keys)}")
    if spec["channels"] not in MODES:
        raise InputError(f"{path}: channels must be 1 (grayscale) or 3 (RGB), not "
                         f"{spec['channels']!r}")
    for k in ("mean", "std"):
        if not isinstance(spec[k], list) or len(spec[k]) != spec["channels"]:
            raise InputError(f"{path}: '{k}' must list one number per channel "
                             f"({spec['channels']})")
    return meta


def describe(spec: dict) -> str:
    """'28x28 grayscale' or '32x32 RGB': what the model takes, in words."""
    return f"{spec['width']}x{spec['height']} {MODES[spec['channels']][1]}"


# the model file's suffix -> the runtime that runs it
RUNTIMES = {".onnx": "onnxruntime", ".tflite": "litert", ".pte": "executorch"}


class Model:
    """One model file behind one call: ``run(x)`` takes float32 (N, C, H, W) and returns the
    logits. ``batch`` is the file's fixed batch size (None: any); a LiteRT or ExecuTorch file
    exported for batch 1 runs the images one by one."""

    def __init__(self, path: Path, threads: int):
        if not path.is_file():
            raise InputError(f"no model at {path}: predict.py needs the model file that "
                             "labels.json names next to it (or pass --model PATH)")
        if path.suffix not in RUNTIMES:
            raise InputError(f"{path}: the model must be .onnx (ONNX Runtime), .tflite (LiteRT) "
                             "or .pte (ExecuTorch)")
        self.runtime = RUNTIMES[path.suffix]
        self.batch = None
        getattr(self, "_open_" + self.runtime)(path, threads)

    def _open_onnxruntime(self, path: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        self.version = ort.__version__
        self._run = lambda x: sess.run(None, {name: x})[0]

    def _open_litert(self, path: Path, threads: int):
        import numpy as np
        from ai_edge_litert import __version__ as version
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(str(path), num_threads=threads)   # XNNPACK delegate: its default
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        self.version, self.batch = version, int(inp["shape"][0])

        def run(x):
            if inp["dtype"] != np.float32:   # a full-integer file: int8 in, int8 out
                scale, zero = inp["quantization"]
                info = np.iinfo(inp["dtype"])
                x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
            it.set_tensor(inp["index"], x)
            it.invoke()
            y = it.get_tensor(out["index"])
            if out["dtype"] != np.float32:
                scale, zero = out["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            return y
        self._run = run

    def _open_executorch(self, path: Path, threads: int):
        # ExecuTorch's C++ runtime through et_runner (built once, see build_runner): its Python
        # runtime would need torch, and PyPI's aarch64 torch is a CUDA build
        import subprocess
        import tempfile
        from importlib.metadata import version

        import numpy as np

        runner = build_runner()
        self.version = version("executorch")
        log = tempfile.TemporaryFile()   # its log lines, shown if it fails
        proc = subprocess.Popen([str(runner), str(path), str(threads)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log)

        def failed(what):
            code = proc.poll()
            proc.kill()
            proc.wait()
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines()
            log.close()
            # ExecuTorch's error lines start "E <time> executorch:", the runner's "et_runner:"
            errors = [ln for ln in lines if ln.startswith(("E ", "et_runner:"))] or lines[-3:]
            status = "" if code is None else (f" (killed by signal {-code})" if code < 0
                                              else f" (exit {code})")
            return RuntimeError(f"ExecuTorch's runner {what}{status}: "
                                f"{' | '.join(errors[-3:]) or 'it printed nothing'}")

        words = proc.stdout.readline().decode().split()
        if len(words) != 3 or words[0] != "ready":
            raise failed(f"could not open {path}")
        in_shape, out_shape = ([int(d) for d in w.split(",")] for w in words[1:])
        self.batch, self._proc = in_shape[0], proc
        out_bytes = 4 * int(np.prod(out_shape))

        def run(x):
            x = np.ascontiguousarray(x, dtype=np.float32)
            if list(x.shape) != in_shape:
                raise InputError(f"{path.name} takes float32 {tuple(in_shape)}, got {x.shape}")
            try:
                proc.stdin.write(x.tobytes())
                proc.stdin.flush()
            except BrokenPipeError:
                raise failed("stopped") from None
            y = proc.stdout.read(out_bytes)
            if len(y) != out_bytes:
                raise failed("stopped")
            return np.frombuffer(y, dtype=np.float32).reshape(out_shape).copy()
        self._run = run

    def close(self):
        """End ExecuTorch's runner, if this model started one (the others hold no process)."""
        import subprocess

        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run(self, x):
        import numpy as np

        if self.batch is None or len(x) == self.batch:
            return self._run(x)
        if self.batch != 1:
            raise InputError(f"this model file takes exactly {self.batch} images per call; "
                             f"got {len(x)} (pass --batch {self.batch})")
        return np.concatenate([self._run(x[i:i + 1]) for i in range(len(x))])


# What the executorch wheel's CMake package (share/cmake/executorch-config.cmake) tells a C++
# consumer to compile and link with; predict.py calls g++ directly, so a Pi needs no CMake.
RUNNER_DEFINES = ("C10_USING_CUSTOM_GENERATED_MACROS", "ET_EVENT_TRACER_ENABLED",
                  "ET_USE_THREADPOOL")
RUNNER_LIBS = ("executorch", "executorch_threadpool", "executorch_backend_xnnpack",
               "executorch_kernels_optimized", "executorch_kernels_quantized")


def build_runner() -> Path:
    """et_runner, compiled from et_runner.cpp (next to predict.py) against the installed
    executorch wheel's headers and libraries, once: it is cached under ~/.cache/edgelab-pi,
    keyed by the source, the wheel's version and place, and the machine."""
    import hashlib
    import shutil
    import subprocess
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    source = HERE / "et_runner.cpp"
    try:
        et = Path(find_spec("executorch").submodule_search_locations[0])
        et_version = version("executorch")
    except (AttributeError, PackageNotFoundError):
        raise InputError("model.pte needs the executorch wheel's runtime libraries: "
                         "pip install --no-deps -r requirements.txt")
    if not source.is_file():
        raise InputError(f"no {source}: an ExecuTorch bundle needs et_runner.cpp next to "
                         "predict.py")
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise InputError("model.pte runs through a small C++ program that predict.py builds "
                         "once, and this machine has no C++ compiler: sudo apt install g++")
    tmp_name = f".et_runner.{os.getpid()}"
    flags = ["-O2", "-std=c++17", "-Wno-deprecated-declarations",
             *(f"-D{d}" for d in RUNNER_DEFINES), f"-I{et / 'include'}",
             f"-I{et / 'include/executorch/runtime/core/portable_type/c10'}",
             f"-L{et / 'lib'}", "-Wl,--no-as-needed", *(f"-l{lib}" for lib in RUNNER_LIBS),
             f"-Wl,-rpath,{et / 'lib'}"]
    key = hashlib.sha256(b"\0".join([source.read_bytes(), et_version.encode(), cxx.encode(),
                                     " ".join(flags).encode(),
                                     platform.machine().encode()])).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelab-pi"
    exe = cache / f"et_runner-{key}"
    if exe.is_file():
        return exe
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / tmp_name
    print(f"predict.py: building ExecuTorch's runner once, into {exe}", file=sys.stderr)
    # the source's bytes are in the key, its place is not (each bundle copy has its own)
    done = subprocess.run([cxx, str(source), *flags, "-o", str(tmp)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or \
            done.stderr.strip().splitlines()[-1:]
        raise RuntimeError(f"{cxx} could not build et_runner (exit {done.returncode}): "
                           f"{errors[0] if errors else 'no message'}; check `g++ --version` "
                           "and that the executorch wheel is installed whole")
    os.replace(tmp, exe)   # whole or not at all: a second predict.py finds it built
    return exe


def image_files(paths: list[str]) -> list[Path]:
    """The image files named, folders expanded to the image files inside them (sorted)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise InputError(f"folder {p} holds no image files "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += inside
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"no such file or folder: {p}")
    return files


def preprocess(path: Path, meta: dict, invert: bool = False, notes=None):
    """One image file -> float32 array (C, H, W), normalised like the training images.

    The image is converted to the model's colour mode (Pillow's 'L' luminance or 'RGB') and
    resized to its size (bilinear); each conversion is reported through ``notes``."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    spec = meta["input"]
    channels, height, width = spec["channels"], spec["height"], spec["width"]
    mode = MODES[channels][0]
    try:
        with Image.open(path) as img:
            img.load()
            original = f"{img.width}x{img.height} {img.mode}"
            changed = []
            if img.mode != mode:
                img = img.convert(mode)
                changed.append(f"converted to {MODES[channels][1]}")
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
                changed.append(f"resized to {width}x{height}")
            pixels = np.asarray(img, dtype=np.float32).reshape(height, width, channels)
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image Pillow can read "
                         f"(use PNG, JPEG, BMP, ...; the model wants {describe(spec)})")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}")
    if changed and notes is not None:
        notes.append(f"note: {path} is {original}; {' and '.join(changed)} "
                     f"(the model was trained on {describe(spec)})")
    if invert:
        pixels = 255.0 - pixels
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    x = (pixels / np.float32(255.0) - mean) / std          # (H, W, C), per channel
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def softmax(z):
    import numpy as np

    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classify(model: Model, files: list[Path], meta: dict, batch: int, invert: bool,
             notes: list):
    """[(file, logits)] for every file, ``batch`` images preprocessed and run at a time."""
    import numpy as np

    out = []
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        x = np.stack([preprocess(f, meta, invert, notes) for f in chunk])
        out += list(zip(chunk, model.run(x)))
    return out


def benchmark(model: Model, meta: dict, files: list[Path], batch: int, runs: int, invert: bool):
    """Median and 90th-percentile latency (ms) of one call on a batch, after warm-up runs."""
    import numpy as np

    spec = meta["input"]
    if files:
        notes: list = []
        images = [preprocess(f, meta, invert, notes) for f in files[:batch]]
        x = np.stack([images[i % len(images)] for i in range(batch)])
    else:   # no image given: a fixed pseudo-random one (timing does not depend on the pixels)
        shape = (batch, spec["channels"], spec["height"], spec["width"])
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if model.batch not in (None, 1, batch):
        raise InputError(f"this model file takes exactly {model.batch} images per call: "
                         f"benchmark it with --batch {model.batch}")
    for _ in range(max(3, runs // 10)):
        model.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(0.9 * len(times)))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="*", help="image files or folders of images")
    p.add_argument("--model", type=Path, default=None,
                   help="default: the model file labels.json names, next to predict.py")
    p.add_argument("--labels", type=Path, default=HERE / "labels.json")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="the runtime's threads (default: all cores)")
    p.add_argument("--batch", type=int, default=64, help="images per model call")
    p.add_argument("--invert", action="store_true",
                   help="invert the images first (a dark object on a light background)")
    p.add_argument("--json", action="store_true", help="print one JSON object, with logits")
    p.add_argument("--benchmark", action="store_true",
                   help="time the model (on the images given, or on a random batch)")
    p.add_argument("--runs", type=int, default=100, help="timed runs in --benchmark mode")
    args = p.parse_args(argv)

    try:
        if args.threads < 1 or args.batch < 1 or args.runs < 1:
            raise InputError("--threads, --batch and --runs must be at least 1")
        if not args.images and not args.benchmark:
            raise InputError("give image files or folders to classify, or --benchmark "
                             "(see --help)")
        meta = load_labels(args.labels)
        files = image_files(args.images)
        model = Model(args.model or HERE / meta.get("model", "model.onnx"), args.threads)
        env = {"machine": platform.machine(), "runtime": model.runtime,
               "runtime_version": model.version, "threads": args.threads}
        if args.benchmark:
            try:
                med, p90 = benchmark(model, meta, files, args.batch, args.runs, args.invert)
            finally:
                model.close()
            result = dict(env, batch=args.batch, runs=args.runs, median_ms=med, p90_ms=p90)
            if args.json:
                print(json.dumps(result))
            else:
                print(f"{platform.machine()}, {model.runtime} {model.version}, {args.threads} "
                      f"thread{'s' if args.threads > 1 else ''}, batch {args.batch}: "
                      f"median {med:.3g} ms, p90 {p90:.3g} ms ({args.runs} runs)")
            return 0
        notes: list = []
        try:
            results = classify(model, files, meta, args.batch, args.invert, notes)
        finally:
            model.close()
    except InputError as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:   # the runtime failed on a valid input (ExecuTorch's runner)
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(note, file=sys.stderr)
    labels = meta["labels"]
    if args.json:
        rows = []
        for f, logits in results:
            probs = softmax(logits)
            k = int(logits.argmax())
            rows.append({"file": str(f), "index": k, "label": labels[k],
                         "probability": float(probs[k]), "logits": [float(v) for v in logits]})
        print(json.dumps(dict(env, predictions=rows)))
    else:
        for f, logits in results:
            probs = softmax(logits)
            k = int(logits.argmax())
            print(f"{f}: {labels[k]} ({100 * probs[k]:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
