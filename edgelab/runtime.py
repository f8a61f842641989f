"""Running quantized and exported models: ONNX export and ONNX Runtime (sessions, static int8),
``torch.compile`` for fixed shapes, the library caches that keep exported graphs alive, and the
quiet wrappers around PyTorch's and ONNX Runtime's chatter. Everything on the CPU, no network.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .memory import release_memory
from .paths import atomic_write_bytes

__all__ = ["quiet", "quiet_logs", "check_calibration", "graph_bytes", "FixedBatches",
           "compile_fixed", "release_compiled", "export_onnx", "session", "CALIBRATIONS", "ort_static", "qdq_linear", "with_outputs",
           "Stopwatch", "cpu_isa", "u8s8_saturates"]

@contextlib.contextmanager
def quiet():
    """Silence the deprecation warnings of torch.ao.quantization once they have been shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def quiet_logs(*names, level: int = logging.ERROR):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_calibration(images) -> None:
    if images is None or len(images) == 0:
        raise ValueError("static quantization needs calibration images to set the activation "
                         "ranges, got 0; pass e.g. edgelab.data.calibration_set(256)")


def graph_bytes(gm: nn.Module) -> bytes:
    """What a converted PT2E graph ships: the tensors its nodes read (int8 weights, scales,
    fp32 biases), saved like a state dict; the original fp32 parameters it no longer uses are
    left out."""
    used = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                used[str(node.target)] = obj.detach()
    buf = io.BytesIO()
    torch.save(used, buf)
    return buf.getvalue()


class FixedBatches(nn.Module):
    """Feeds a compiled model only the shapes it was compiled for: batch 1, or chunks of
    ``batch`` (the last one padded). Each new shape would cost another compile."""

    def __init__(self, compiled, batch: int = 64):
        super().__init__()
        self.compiled, self.batch = compiled, batch

    def train(self, mode: bool = True):
        # an exported graph refuses train()/eval(); this one is for inference only
        self.training = mode
        return self

    def forward(self, x):
        # The graphs were compiled under Inductor's freezing; the same setting on every call keeps
        # Dynamo's guards satisfied (without it each shape recompiles unfrozen: about 5x slower).
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            if len(x) == 1:
                return self.compiled(x)
            outs = []
            for start in range(0, len(x), self.batch):
                chunk = x[start:start + self.batch]
                n = len(chunk)
                if n < self.batch:
                    chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
                outs.append(self.compiled(chunk)[:n])
            return torch.cat(outs)


def compile_fixed(model: nn.Module, example: torch.Tensor, batch: int = 64) -> tuple[nn.Module, float]:
    """``torch.compile`` with Inductor's weight freezing (needed to pick the int8 kernels) and
    static shapes (``dynamic=False``: one graph per input shape, hence the fixed batches),
    compiled now for batch 1 and ``batch`` of ``example``'s rows; returns the model and the
    seconds the two compiles took (cold the first time in a process; Inductor caches on disk)."""
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="torch._inductor")
    compiled = torch.compile(model, dynamic=False)
    wrapped = FixedBatches(compiled, batch)
    t0 = time.perf_counter()
    # both shapes compile now, under freezing (FixedBatches sets it for each call, not for the
    # rest of the process)
    with torch.inference_mode(), quiet():
        row = torch.zeros_like(example[:1])
        wrapped(row)
        wrapped(row.expand(batch, *row.shape[1:]).contiguous())
    return wrapped, time.perf_counter() - t0


# Process-wide caches that keep every exported graph (and its fake tensors and shape
# environment) alive after the model is deleted: ~65 MB after one PT2E export + compile, and more
# with each round (torch 2.14 / torchao 0.17). Named here so a version bump that moves one is
# found by tests/test_quantize.py rather than silently leaking again.
_GRAPH_CACHES = (
    ("torchao.utils", "_assert_and_get_unique_device"),             # functools.cache on modules
    ("torch.ao.quantization.fx.utils", "assert_and_get_unique_device"),
)


def _clear_export_caches() -> None:
    """Empty the caches above."""
    import importlib
    import sys

    from torch.fx.experimental import proxy_tensor
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    for module, name in _GRAPH_CACHES:
        if module in sys.modules:    # never import a module just to clear it
            getattr(importlib.import_module(module), name).cache_clear()
    # ShapeEnv's methods are memoized on ``self``: each cache keeps its shape environments.
    for attr in vars(ShapeEnv).values():
        if hasattr(attr, "cache_clear"):
            attr.cache_clear()
    proxy_tensor._FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT.clear()
    if "torch._decomp.decompositions_for_rng" in sys.modules:
        from torch._decomp.decompositions_for_rng import PhiloxStateTracker
        PhiloxStateTracker.reset()


def release_compiled() -> None:
    """Drop what torch.compile and torch.export keep after their models are deleted (guards,
    graphs, kernels, exported graphs in library caches): otherwise it stays resident, and grows
    with each export. Inductor's on-disk cache stays, so a recompile is warm."""
    import torch._dynamo

    torch._dynamo.reset()
    _clear_export_caches()
    release_memory()


def export_onnx(model: nn.Module, path, example: torch.Tensor) -> Path:
    """Export with the dynamo exporter: one self-contained ``.onnx`` file, input ``image`` shaped
    like ``example`` but with a dynamic batch size, output ``logits``; written atomically."""
    path = Path(path)
    if not isinstance(example, torch.Tensor) or example.dim() < 1:
        raise TypeError("example must be an input batch the model accepts, e.g. "
                        f"images[:2]; got {type(example).__name__}")
    if len(example) < 2:   # a batch of 1 would let the exporter specialise the batch to 1
        example = example.expand(2, *example.shape[1:])
    model = model.cpu().eval()
    with quiet(), quiet_logs("torch.onnx", "onnxscript"), \
            contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(model, (example,), input_names=["image"],
                                    output_names=["logits"], dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    external_data=False)
    atomic_write_bytes(path, program.model_proto.SerializeToString())
    del program
    _clear_export_caches()   # the exporter runs torch.export: the caches PT2E fills
    return path


def session(path, threads: int | None = None, ort_defaults: bool = False):
    """An ONNX Runtime CPU session with all graph optimizations, ``threads`` intra-op threads.

    ``ort_defaults=True`` leaves everything but the thread count at ONNX Runtime's defaults (idle
    threads spin), as the Pi bundle's predict.py does; the default here makes idle threads sleep."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    if ort_defaults:
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: a little slower on an idle machine, far
    # steadier on a shared one (spinning threads fight over the cores).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime's own arena: it holds the largest batch's activations for the session's life
    # (freed with the session), where running without it sent every activation buffer through
    # glibc, whose heap then grew by up to 0.8 GB in one full run of 02.
    opts.enable_cpu_mem_arena = True
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


CALIBRATIONS = ("minmax", "percentile", "entropy")


def ort_static(fp32_path, out_path, images: torch.Tensor, per_channel: bool = True,
               activations: str = "uint8", batch_size: int = 16,
               calibration: str = "minmax", reduce_range: bool | None = None) -> Path:
    """ONNX Runtime post-training static quantization in QDQ format: int8 weights (per channel
    or per tensor), ``uint8`` or ``int8`` activations whose ranges are calibrated on ``images``:
    ``"minmax"`` (the observed range), ``"percentile"`` (clips the top 0.001 %) or ``"entropy"``
    (the range that keeps the histogram's KL divergence smallest). Images go in equal batches
    of at most ``batch_size``. ``reduce_range`` (7-bit weights) defaults to
    ``u8s8_saturates()`` for uint8 activations: on an x86 CPU without VNNI the file's x86
    answers would otherwise differ from a Pi's."""
    from onnxruntime import quantization as oq

    check_calibration(images)
    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be 'uint8' or 'int8', got {activations!r}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    if reduce_range is None:
        reduce_range = activations == "uint8" and u8s8_saturates()
    method = {"minmax": oq.CalibrationMethod.MinMax, "entropy": oq.CalibrationMethod.Entropy,
              "percentile": oq.CalibrationMethod.Percentile}[calibration]

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # The histogram calibrators stack each tensor's batches into one array and fail on a short
    # last batch: every batch the same size, the largest divisor of the count <= batch_size.
    batch_size = max(b for b in range(1, batch_size + 1) if len(images) % b == 0)

    class Reader(oq.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": images[i:i + batch_size].numpy()}
                                 for i in range(0, len(images), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    pre = out_path.with_name(f".{out_path.name}.pre.onnx")
    # the histogram calibrators print their progress: not the learner's business
    with quiet_logs("root"), contextlib.redirect_stdout(io.StringIO()):
        oq.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        oq.quantize_static(str(pre), str(tmp), Reader(), quant_format=oq.QuantFormat.QDQ,
                           per_channel=per_channel,
                           activation_type=oq.QuantType.QUInt8 if activations == "uint8"
                           else oq.QuantType.QInt8,
                           weight_type=oq.QuantType.QInt8, reduce_range=reduce_range,
                           calibrate_method=method)
    pre.unlink(missing_ok=True)
    os.replace(tmp, out_path)
    return out_path


def qdq_linear(onnx_path, weight: str = "fc.weight") -> dict:
    """What ONNX Runtime's QDQ model chose for one Gemm/MatMul layer, read from its graph: the
    input's and output's scale, zero point and tensor names, the int8 weights and their scales,
    and the bias (int32 ``bias_q`` at ``bias_scale`` when quantized, else float ``bias``). ``weight`` names the layer's weight initializer as exported."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(onnx_path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    made_by = {o: n for n in g.node for o in n.output}
    used_by = {}
    for n in g.node:
        for i in n.input:
            used_by.setdefault(i, []).append(n)
    layer = next((n for n in g.node if n.op_type in ("Gemm", "MatMul")
                  and any(i.startswith(weight) for i in n.input)), None)
    if layer is None:
        raise KeyError(f"no Gemm or MatMul with a weight named {weight!r} in {onnx_path}")
    x_dq, w_dq = made_by[layer.input[0]], made_by[layer.input[1]]
    y_q = next(n for n in used_by[layer.output[0]] if n.op_type == "QuantizeLinear")
    if x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        raise ValueError(f"{layer.name or layer.op_type} is not in QDQ form (inputs from "
                         f"{x_dq.op_type}, {w_dq.op_type})")

    def zp(node):
        return int(init[node.input[2]]) if len(node.input) > 2 else 0
    bias, bias_q, bias_scale = None, None, None
    if len(layer.input) > 2:
        b_dq = made_by.get(layer.input[2])
        if b_dq is not None and b_dq.op_type == "DequantizeLinear":   # int32, at s_x * s_w
            bias_q, bias_scale = init[b_dq.input[0]], init[b_dq.input[1]]
        else:
            bias = init.get(layer.input[2])
    return {"x_name": x_dq.input[0], "x_scale": float(init[x_dq.input[1]]), "x_zp": zp(x_dq),
            "w_q": init[w_dq.input[0]], "w_scale": init[w_dq.input[1]],
            "bias": bias, "bias_q": bias_q, "bias_scale": bias_scale,
            "transposed": any(a.name == "transB" and a.i == 1 for a in layer.attribute),
            "y_name": y_q.output[0], "y_scale": float(init[y_q.input[1]]), "y_zp": zp(y_q)}


def with_outputs(onnx_path, names: list[str], out_path) -> Path:
    """A copy of the model that also returns the named intermediate tensors, in that order."""
    import onnx

    model = onnx.load(str(onnx_path))
    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.s``: wall seconds of a block."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
        return False


def cpu_isa() -> dict:
    """What this CPU offers int8 kernels: PyTorch's dispatch level, whether it has VNNI (the
    u8 x s8 dot-product instructions), and the relevant /proc/cpuinfo flags (Linux only)."""
    import platform

    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"machine": platform.machine(), "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "vnni": bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)()),
            "flags": [f for f in wanted if f in flags]}


def u8s8_saturates(isa: dict | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 (U8S8) kernels can saturate on this CPU. Without VNNI,
    x86 multiplies u8 x s8 pairs into one 16-bit sum (VPMADDUBSW), which overflows for large
    activations and weights; VNNI and Arm accumulate in 32 bits. ONNX Runtime's docs give
    ``reduce_range`` (7-bit weights) as the remedy
    (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html)."""
    isa = isa or cpu_isa()
    x86 = isa["machine"].lower() in ("x86_64", "amd64", "i386", "i686")
    return x86 and not (isa["vnni"] or {"avx512_vnni", "avx_vnni"} & set(isa["flags"]))
