"""Two more edge runtimes beside ONNX Runtime: ExecuTorch (``.pte`` programs, XNNPACK delegate,
its Python runtime) and LiteRT (``.tflite`` files converted by litert-torch, run by
ai-edge-litert's interpreter with XNNPACK). Same model in, a file per batch size out, and a
session that answers like ONNX Runtime's, so ``measure``, ``evaluation`` and ``latency`` treat the
three runtimes alike.

Both runtimes' programs have a fixed batch size here. ExecuTorch can export a bounded dynamic
batch, but the program 1.5.1 wrote for a ``Dim("batch", max=64)`` accepted at most 15 images (its
own error says so; 05_edge_runtimes shows it), and litert-torch 0.10's converter fails on a
dynamic batch (the error is shown there too). So ``export`` writes ``-b1`` (what ships) and
``-b64`` (to time batch 64) from the same quantized graph, and ``session`` picks the file whose
batch fits.

int8 is PT2E in both: ``prepare_pt2e`` with each runtime's own quantizer (ExecuTorch's
``XNNPACKQuantizer``, litert-torch's ``PT2EQuantizer``), calibration, ``convert_pt2e``, then the
runtime's lowering. LiteRT's int8 file takes and returns int8 tensors (full-integer), so its
session quantizes the input and dequantizes the logits with the file's own scales.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

__all__ = ["RUNTIMES", "SUFFIX", "BATCHES", "quiet", "quantize_int8", "export_pte", "export_tflite",
           "export", "session", "EdgeSession", "executorch_threads", "dynamic_batch_error"]

RUNTIMES = ("executorch", "litert")
SUFFIX = {"executorch": ".pte", "litert": ".tflite"}
BATCHES = (1, 64)


def _check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES} (ONNX Runtime is edgelab.runtime's), "
                         f"got {runtime!r}")
    return runtime


def _quantizer(runtime: str):
    if _check_runtime(runtime) == "executorch":
        with quiet():
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)
        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with quiet():
        from litert_torch.quantize.pt2e_quantizer import (PT2EQuantizer,
                                                          get_symmetric_quantization_config)
    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                        is_dynamic=False))


def quantize_int8(model: nn.Module, calibration: torch.Tensor, runtime: str):
    """PT2E int8 with the runtime's quantizer (per-channel symmetric weights, static activations):
    export with a dynamic batch, observe ``calibration`` in batches of 64, convert. Returns
    (converted graph module, quantizer); every batch size is exported from this one graph, so
    the b1 and b64 files hold the same scales."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None or len(calibration) < 2:
        raise ValueError("int8 needs calibration images (a tensor of at least 2 normalised "
                         "images shaped like the model's input), e.g. data.calibration_set(512)")
    quantizer = _quantizer(runtime)
    batch = torch.export.Dim("batch", min=1, max=1024)
    gm = torch.export.export(model.eval(), (calibration[:2],), dynamic_shapes=({0: batch},)).module()
    with quiet(), torch.no_grad():
        gm = prepare_pt2e(gm, quantizer)
        for i in range(0, len(calibration), 64):
            gm(calibration[i:i + 64])
        # litert-torch reads the quantize/dequantize pairs itself: they must stay unfolded
        gm = convert_pt2e(gm, fold_quantize=runtime == "executorch")
    move_exported_model_to_eval(gm)
    return gm, quantizer


def _atomic_write_bytes(path: Path, blob: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    return path


def export_pte(model: nn.Module, path, example: torch.Tensor, delegate: bool = True) -> Path:
    """An ExecuTorch program for ``example``'s batch size: torch.export, then
    ``to_edge_transform_and_lower`` with the XNNPACK partitioner (``delegate=False``: the portable
    operators only, ExecuTorch's reference kernels). ``model`` may be quantize_int8's graph."""
    with quiet():   # importing executorch logs torch's deprecation warnings
        from executorch.exir import to_edge, to_edge_transform_and_lower

        ep = torch.export.export(model, (example,))
        if delegate:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackPartitioner)
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        else:
            edge = to_edge(ep)
        blob = edge.to_executorch().buffer
    return _atomic_write_bytes(Path(path), blob)


@contextlib.contextmanager
def quiet():
    """The libraries' chatter off, for a notebook: litert-torch prints a progress line per
    conversion stage and absl/XNNPACK/ExecuTorch's C++ log to file descriptor 2 (a line per thread
    pool reset, per delegate created); the partitioner logs every partition it splits. Errors
    still raise."""
    import logging
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    loggers = [logging.getLogger(n) for n in ("", "root", "torch", "executorch", "litert_torch")]
    levels = [lg.level for lg in loggers]
    try:
        os.dup2(devnull, 2)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_tflite(model: nn.Module, path, example: torch.Tensor, quantizer=None) -> Path:
    """A LiteRT flatbuffer for ``example``'s batch size, converted by litert-torch; pass
    ``quantizer`` (quantize_int8's) with its converted graph for full-integer int8."""
    path = Path(path)
    with quiet():   # importing litert-torch logs from C++ too
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig

        # its progress lines go through rich, which in a notebook displays them itself
        litert_torch.config.show_progress = False
        config = QuantConfig(pt2e_quantizer=quantizer) if quantizer is not None else None
        converted = litert_torch.convert(model, (example,), quant_config=config)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tflite")
        os.close(fd)
        converted.export(tmp)
    os.replace(tmp, path)
    return path


def export(model: nn.Module, stem, runtime: str, example: torch.Tensor, *,
           calibration: torch.Tensor | None = None, batches=BATCHES) -> dict[int, Path]:
    """Files ``<stem>-b<N><suffix>`` for each batch size in ``batches``, fp32, or int8 when
    ``calibration`` images are given (one quantization for every batch size). ``example``: one
    input batch, any size (its shape after the batch axis is used)."""
    _check_runtime(runtime)
    if not batches or any(int(b) < 1 for b in batches):
        raise ValueError(f"batches must be positive batch sizes, got {batches!r}")
    model = model.cpu().eval()
    quantizer = None
    if calibration is not None:
        model, quantizer = quantize_int8(model, calibration, runtime)
    out = {}
    for b in batches:
        x = example[:1].expand(int(b), *example.shape[1:]).contiguous()
        path = Path(f"{stem}-b{b}{SUFFIX[runtime]}")
        out[int(b)] = (export_pte(model, path, x) if runtime == "executorch"
                       else export_tflite(model, path, x, quantizer))
    del model, quantizer
    _release()
    return out


def _release() -> None:
    """torch.export keeps each exported graph in library caches (edgelab.runtime says which):
    freed after every export, or a notebook of eight exports grows by each."""
    from .runtime import release_compiled

    release_compiled()


def dynamic_batch_error(model: nn.Module, example: torch.Tensor, runtime: str) -> str:
    """What a runtime says to a batch of 64 through a program exported with a dynamic batch
    (1..64): the library's error (with, for ExecuTorch, the input size its program planned), or
    "" when it ran."""
    dim = torch.export.Dim("batch", min=1, max=64)
    x2 = example[:1].expand(2, *example.shape[1:]).contiguous()
    x64 = example[:1].expand(64, *example.shape[1:]).contiguous()
    planned = ""
    try:
        with tempfile.TemporaryDirectory() as d:
            with quiet():
                ep = torch.export.export(model.eval(), (x2,), dynamic_shapes=({0: dim},))
                if _check_runtime(runtime) == "executorch":
                    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                        XnnpackPartitioner)
                    from executorch.exir import to_edge_transform_and_lower
                    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
                    path = _atomic_write_bytes(Path(d) / "dyn.pte", prog.to_executorch().buffer)
                else:
                    import litert_torch
                    litert_torch.config.show_progress = False
                    path = Path(d) / "dyn.tflite"
                    litert_torch.convert(model.eval(), (x2,), dynamic_shapes=({0: dim},)).export(
                        str(path))
            sess = EdgeSession({64: path})
            if runtime == "executorch":
                sizes = list(sess.programs[64].method.metadata.input_tensor_meta(0).sizes())
                planned = f" (the program's input was planned for at most {sizes})"
            with quiet():
                sess.run(None, {"x": x64.numpy()})
    except Exception as e:   # the library's own words, for the notebook to show
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:240]}{planned}"
    finally:
        _release()
    return ""


def executorch_threads(threads: int | None = None) -> int:
    """ExecuTorch's Python runtime runs XNNPACK on one process-wide thread pool (as many threads
    as cores by default); its only handle is ``_unsafe_reset_threadpool``. Set it to ``threads``
    when given; returns the pool's size."""
    from executorch.extension.pybindings import portable_lib

    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        portable_lib._unsafe_reset_threadpool(int(threads))
    return int(portable_lib._threadpool_get_thread_count())


class _Pte:
    def __init__(self, path: Path, threads: int):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "experimental API"
            from executorch.runtime import Runtime
        with quiet():
            executorch_threads(threads)
            self.method = Runtime.get().load_program(path).load_method("forward")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.method.execute([torch.from_numpy(x)])[0].numpy()


class _Tflite:
    def __init__(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        with quiet():
            self.it = Interpreter(str(path), num_threads=threads)
            self.it.allocate_tensors()
        self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        scale, zero = self.inp["quantization"]
        if self.inp["dtype"] != np.float32:   # full-integer file: int8 in, int8 out
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self.inp["dtype"])
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] != np.float32:
            s, z = self.out["quantization"]
            y = (y.astype(np.float32) - z) * s
        return y


class EdgeSession:
    """ONNX Runtime's session interface (``get_inputs``, ``run``) over fixed-batch ExecuTorch or
    LiteRT files, {batch size: path}: a batch runs on the largest file that fits, the rest on
    smaller ones, so any number of images works. ``runtime`` says which; ``threads`` is what
    each runtime was asked for (ExecuTorch's pool is process-wide: the last session sets it)."""

    def __init__(self, paths: dict, threads: int = 1):
        paths = {int(b): Path(p) for b, p in paths.items()}
        if not paths:
            raise ValueError("EdgeSession needs at least one {batch size: file}")
        kinds = {p.suffix for p in paths.values()}
        runtimes = [r for r, s in SUFFIX.items() if {s} == kinds]
        if not runtimes:
            raise ValueError(f"files must all be .pte (ExecuTorch) or all .tflite (LiteRT), got "
                             f"{sorted(str(p) for p in paths.values())}")
        for p in paths.values():
            if not p.is_file():
                raise FileNotFoundError(f"no {runtimes[0]} file at {p}; write it with "
                                        "edgelab.edge.export")
        self.runtime, self.threads, self.paths = runtimes[0], int(threads), paths
        load = _Pte if self.runtime == "executorch" else _Tflite
        self.programs = {b: load(p, self.threads) for b, p in sorted(paths.items())}
        self.batches = sorted(self.programs)
        self._input = SimpleNamespace(name="x", shape=[None, *self._shape()])

    def _shape(self) -> list:
        if self.runtime == "litert":
            return [int(d) for d in next(iter(self.programs.values())).inp["shape"][1:]]
        meta = next(iter(self.programs.values())).method.metadata.input_tensor_meta(0)
        return [int(d) for d in meta.sizes()[1:]]

    def get_inputs(self):
        return [self._input]

    def run(self, output_names, feed: dict) -> list[np.ndarray]:
        x = np.ascontiguousarray(next(iter(feed.values())), dtype=np.float32)
        out, start = [], 0
        while start < len(x):
            b = max((b for b in self.batches if b <= len(x) - start), default=None)
            if b is None:
                raise ValueError(f"no file for a batch of {len(x) - start}: this session has "
                                 f"batch sizes {self.batches}; export one of batch 1")
            out.append(self.programs[b](x[start:start + b]))
            start += b
        return [np.concatenate(out)]


def session(paths, threads: int = 1) -> EdgeSession:
    """An EdgeSession for ``export``'s {batch size: path} (or one file of batch 1)."""
    if isinstance(paths, (str, Path)):
        paths = {1: paths}
    return EdgeSession(paths, threads)
