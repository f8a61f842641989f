"""Quantization plumbing for notebook 02: the affine math, fake quantization of weights, PyTorch's
dynamic / static / QAT flows (eager ``torch.ao.quantization`` and PT2E from torchao), and
ONNX Runtime's static int8.

The notebook shows the idea of each step in its own cells; this module holds what would clutter
them. Everything runs on the CPU and never touches the network.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .measure import release_memory
from .models import atomic_write_bytes

__all__ = ["check_bits", "int_range", "qparams", "quantize", "dequantize", "quantize_dequantize",
           "relative_error", "quantizable_weights", "weight_bytes", "mixed_bits", "float_bytes",
           "fake_quantized_weights", "WithWeights", "with_weights", "fake_quantize_weights",
           "NoQuantizedEngine", "quantized_engine", "quiet", "quantizable_teacher", "dynamic",
           "eager_qconfig", "calibrate", "eager_prepare", "eager_convert", "eager_static",
           "qat_prepare", "qat_finetune", "CallSites", "reused_modules", "unshare_modules",
           "x86_quantizer", "pt2e_static", "graph_bytes", "deprecation_notice", "FixedBatches",
           "compile_fixed", "release_compiled", "export_onnx", "session", "ort_static",
           "module_types", "Stopwatch"]

MIN_BITS, MAX_BITS = 2, 16


# --------------------------------------------------------------------------------------------
# The affine math
# --------------------------------------------------------------------------------------------

def check_bits(bits) -> int:
    """``bits`` as an int, or a ValueError that names the supported range."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer codes: unsigned [0, 2^b - 1] (asymmetric) or signed ±(2^(b-1) - 1) (symmetric).

    The symmetric range drops -2^(b-1) so that +x and -x get codes of the same size."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    axis = axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


def qparams(x: torch.Tensor, bits: int = 8, axis: int | None = None,
            symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for ``x``: one pair (``axis=None``) or one per slice along ``axis``.

    Both come back shaped to broadcast against ``x``. The range is widened to include 0, and the
    zero point is rounded to an integer, so that 0.0 is exactly representable (padding and ReLU
    produce many exact zeros)."""
    qmin, qmax = int_range(bits, symmetric)
    dims = _reduce_dims(x, axis)
    x = x.detach().float()
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"cannot quantize a tensor with NaN or Inf: {bad} of its {x.numel()} "
                         "values are not finite, and one of them would make every scale (and so "
                         "every value) NaN. Find where they come from (a diverged training run, "
                         "a division by zero) and fix that first.")
    if symmetric:
        amax = x.abs().amax(dim=dims, keepdim=True)
        scale = amax / qmax
        zero_point = torch.zeros_like(scale)
    else:
        lo = x.amin(dim=dims, keepdim=True).clamp(max=0)
        hi = x.amax(dim=dims, keepdim=True).clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
        zero_point = None
    # A constant-zero tensor (a pruned filter) has no range: any positive scale works.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if zero_point is None:
        zero_point = (qmin - lo / scale).round().clamp(qmin, qmax)
    return scale, zero_point


def quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Float -> integer codes: divide by the scale, round to nearest, shift, clamp."""
    return (torch.round(x / scale) + zero_point).clamp(qmin, qmax)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """Integer codes -> float: undo the shift, multiply by the scale."""
    return (q - zero_point) * scale


def quantize_dequantize(x: torch.Tensor, bits: int = 8, axis: int | None = None,
                        symmetric: bool = False) -> torch.Tensor:
    """Fake quantization: round ``x`` to the ``2**bits`` levels it would have as integers, and
    return floats again. The reference the notebook's exercise is checked against."""
    scale, zero_point = qparams(x, bits, axis, symmetric)
    qmin, qmax = int_range(bits, symmetric)
    return dequantize(quantize(x.float(), scale, zero_point, qmin, qmax), scale, zero_point).to(x.dtype)


def relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """‖x - x̂‖ / ‖x‖: how much of the tensor quantization lost."""
    x, x_hat = x.detach().float(), x_hat.detach().float()
    return float((x - x_hat).norm() / x.norm().clamp(min=1e-12))


# --------------------------------------------------------------------------------------------
# Fake-quantized weights (the bit-width slider)
# --------------------------------------------------------------------------------------------

def quantizable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight of every Conv2d and Linear, by its state-dict key (what int8 kernels store)."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def weight_bytes(model: nn.Module, bits: int | dict[str, int], per_channel: bool) -> int:
    """Bytes the weights would take at ``bits`` per Conv/Linear weight (packed; or a width per
    weight's state-dict key), with one fp32 scale (symmetric: no zero point) per tensor or per
    output channel; everything else stays fp32 (biases, batch norm)."""
    quantized = quantizable_weights(model)
    widths = bits if isinstance(bits, dict) else dict.fromkeys(quantized, bits)
    if set(widths) != set(quantized):
        raise ValueError(f"bits per weight must name exactly the Conv/Linear weights "
                         f"{sorted(quantized)}")
    total_bits = 0
    for key, t in model.state_dict().items():
        if key in quantized:
            total_bits += t.numel() * check_bits(widths[key]) + 32 * (t.shape[0] if per_channel else 1)
        elif t.is_floating_point():
            total_bits += t.numel() * 32
    return (total_bits + 7) // 8


def mixed_bits(drop_at_min: dict[str, float], sizes: dict[str, int], budget_bits: int,
               choices=(2, 3, 4, 5, 6, 8)) -> dict[str, int]:
    """A width per layer within ``budget_bits`` weight bits in all: start every layer at the
    smallest width, then repeatedly give one more step to the layer whose modelled loss falls
    most per extra bit. A layer's loss at ``b`` bits is modelled as its measured accuracy drop at
    the smallest width times 4^-(b - min): each extra bit halves the rounding step, quartering
    the error's variance."""
    choices = sorted(check_bits(b) for b in choices)
    if set(drop_at_min) != set(sizes):
        raise ValueError("drop_at_min and sizes must name the same layers")
    bits = dict.fromkeys(sizes, choices[0])
    used = sum(n * choices[0] for n in sizes.values())
    if used > budget_bits:
        raise ValueError(f"the budget of {budget_bits:,} bits is below {choices[0]} bits a weight "
                         f"({used:,} bits)")

    def loss(k, b):
        return max(drop_at_min[k], 0.0) * 4.0 ** -(b - choices[0])

    while True:
        best, best_gain = None, 0.0
        for k, b in bits.items():
            if b == choices[-1]:
                continue
            nxt = choices[choices.index(b) + 1]
            cost = sizes[k] * (nxt - b)
            if used + cost <= budget_bits:
                gain = (loss(k, b) - loss(k, nxt)) / cost
                if best is None or gain > best_gain:
                    best, best_gain = (k, nxt, cost), gain
        if best is None:
            return bits
        k, nxt, cost = best
        bits[k], used = nxt, used + cost


def float_bytes(model: nn.Module) -> int:
    """Bytes of every floating-point tensor of the state dict at 4 bytes each (no file format)."""
    return sum(4 * t.numel() for t in model.state_dict().values() if t.is_floating_point())


def fake_quantized_weights(model: nn.Module, bits: int, per_channel: bool,
                           source: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Each Conv/Linear weight of ``model`` (or its original in ``source``), symmetric
    fake-quantized into a new tensor, by state-dict key; the model is left as it is."""
    check_bits(bits)
    if source is None:
        source = {k: w.detach() for k, w in quantizable_weights(model).items()}
    return {k: quantize_dequantize(w, bits, axis=0 if per_channel else None, symmetric=True)
            for k, w in source.items()}


class WithWeights(nn.Module):
    """``model`` run with some of its weights replaced (``torch.func.functional_call``): fake
    quantization without a copy of the model."""

    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.weights = model, weights

    def forward(self, x):
        return torch.func.functional_call(self.model, self.weights, (x,))


def with_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` with the tensors in ``weights`` (by state-dict key) used in place of its own."""
    unknown = set(weights) - set(model.state_dict())
    if unknown:
        raise KeyError(f"{type(model).__name__} has no tensors named {sorted(unknown)}")
    return WithWeights(model, weights)


def fake_quantize_weights(model: nn.Module, bits: int, per_channel: bool,
                          source: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Replace each Conv/Linear weight of ``model`` (in place) by its symmetric fake-quantized
    copy; ``source`` holds the original weights so that repeated calls do not compound."""
    check_bits(bits)
    weights = quantizable_weights(model)
    source = source if source is not None else {k: w.detach().clone() for k, w in weights.items()}
    fake = fake_quantized_weights(model, bits, per_channel, source)
    with torch.no_grad():
        for key, w in weights.items():
            w.copy_(fake[key])
    return model


# --------------------------------------------------------------------------------------------
# Engines, and PyTorch's deprecation chatter
# --------------------------------------------------------------------------------------------

class NoQuantizedEngine(RuntimeError):
    pass


def _supported_engines() -> list[str]:
    return list(torch.backends.quantized.supported_engines)


def quantized_engine(preferred=("x86", "fbgemm", "onednn", "qnnpack")) -> str:
    """Select PyTorch's int8 CPU kernels (x86 on Intel/AMD, qnnpack on ARM) or raise
    NoQuantizedEngine with what to do instead; some wheels (macOS) ship without any."""
    engines = [e for e in _supported_engines() if e != "none"]
    for e in preferred:
        if e in engines:
            torch.backends.quantized.engine = e
            return e
    raise NoQuantizedEngine(
        "this PyTorch build has no quantized CPU engine "
        f"(torch.backends.quantized.supported_engines = {_supported_engines()}),"
        " so PyTorch int8 models cannot run here. The notebook carries on with ONNX Runtime, "
        "whose int8 kernels work on every platform it ships for.")


@contextlib.contextmanager
def quiet():
    """Silence the deprecation warnings of torch.ao.quantization once they have been shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------
# PyTorch flows on the teacher
# --------------------------------------------------------------------------------------------

def quantizable_teacher(teacher: nn.Module) -> nn.Module:
    """The teacher's weights in torchvision's quantizable ResNet18.

    Same layers and state-dict keys, but each residual add goes through a ``FloatFunctional``
    (an op the eager flow can observe and replace), each ReLU module is used once (the fusion
    patterns of both eager and PT2E need that), and QuantStub / DeQuantStub mark where int8
    starts and ends."""
    from torchvision.models.quantization import resnet18 as qresnet18

    q = qresnet18(weights=None, quantize=False, num_classes=teacher.fc.out_features)
    q.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    q.load_state_dict(teacher.state_dict())
    return q.eval()


def dynamic(model: nn.Module, layers=(nn.Linear, nn.Conv2d)) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic``: weights to int8 now, activations scaled at run
    time. It only has kernels for Linear and recurrent layers; other types are left as they are."""
    release_memory()
    with quiet():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), set(layers),
                                                      dtype=torch.qint8)


def eager_qconfig(per_channel: bool, qat: bool = False, weight_bits: int = 8):
    """x86 defaults: histogram observer for activations (uint8), MinMax for weights (signed,
    symmetric, ``weight_bits`` wide, stored in int8), per output channel or per tensor."""
    tq = torch.ao.quantization
    check_bits(weight_bits)
    if weight_bits > 8:
        raise ValueError(f"PyTorch's int8 kernels hold at most 8-bit weights, got {weight_bits}")
    qmin, qmax = -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1
    scheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    with quiet():
        base = tq.get_default_qat_qconfig("x86") if qat else tq.get_default_qconfig("x86")
        if qat:
            observer = (tq.MovingAveragePerChannelMinMaxObserver if per_channel
                        else tq.MovingAverageMinMaxObserver)
            weight = tq.FakeQuantize.with_args(observer=observer, quant_min=qmin, quant_max=qmax,
                                               dtype=torch.qint8, qscheme=scheme)
        else:
            observer = tq.PerChannelMinMaxObserver if per_channel else tq.MinMaxObserver
            weight = observer.with_args(dtype=torch.qint8, qscheme=scheme, quant_min=qmin,
                                        quant_max=qmax)
        return tq.QConfig(activation=base.activation, weight=weight)


def _check_calibration(images) -> None:
    if images is None or len(images) == 0:
        raise ValueError("static quantization needs calibration images to set the activation "
                         "ranges, got 0; pass e.g. edgelab.data.calibration_set(256)")


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Run the calibration images through a prepared model so its observers see real ranges."""
    _check_calibration(images)
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size])
    return model


def eager_prepare(teacher: nn.Module, per_channel: bool = True, weight_bits: int = 8) -> nn.Module:
    """Fuse Conv+BN(+ReLU), attach observers (a copy; the teacher is untouched)."""
    release_memory()
    quantized_engine()
    m = quantizable_teacher(teacher)
    with quiet():
        m.fuse_model()
        m.qconfig = eager_qconfig(per_channel, weight_bits=weight_bits)
        torch.ao.quantization.prepare(m, inplace=True)
    return m


def eager_convert(prepared: nn.Module) -> nn.Module:
    """Swap observed float modules for int8 ones with the ranges the observers saw."""
    with quiet():
        return torch.ao.quantization.convert(prepared.eval(), inplace=False)


def eager_static(teacher: nn.Module, images: torch.Tensor, per_channel: bool = True,
                 weight_bits: int = 8) -> nn.Module:
    """Post-training static quantization with the eager flow: fuse, observe, calibrate, convert."""
    _check_calibration(images)
    return eager_convert(calibrate(eager_prepare(teacher, per_channel, weight_bits), images))


def qat_prepare(teacher: nn.Module, per_channel: bool = True, weight_bits: int = 8) -> nn.Module:
    """Fuse Conv+BN(+ReLU) for training and insert fake-quantize modules (a copy)."""
    release_memory()
    quantized_engine()
    m = quantizable_teacher(teacher).train()
    with quiet():
        m.fuse_model(is_qat=True)
        m.qconfig = eager_qconfig(per_channel, qat=True, weight_bits=weight_bits)
        torch.ao.quantization.prepare_qat(m, inplace=True)
    return m


def qat_finetune(prepared: nn.Module, batches, steps: int, lr: float = 1e-3,
                 freeze_bn_after: float = 0.5, observe_until: float = 0.75) -> list[float]:
    """A short fine-tune with fake quantization in the forward pass: the weights learn to sit
    well on the int8 grid. Batch-norm statistics freeze halfway, the observers after 3/4 of the
    steps (the usual recipe), so the last steps train against fixed ranges."""
    import torch.nn.functional as F

    if steps < 1:
        raise ValueError(f"QAT needs at least 1 step, got {steps}")
    opt = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=0.9)
    prepared.train()
    losses, step = [], 0
    while step < steps:
        for x, y in batches:
            if step == int(freeze_bn_after * steps):
                prepared.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
            if step == int(observe_until * steps):
                prepared.apply(torch.ao.quantization.disable_observer)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(prepared(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step >= steps:
                break
    return losses


class CallSites(nn.Module):
    """One stateless module called from several places, given one copy per call site.

    PT2E's quantizers group graph nodes by the module that produced them; a module called twice
    (torchvision's BasicBlock calls one ``ReLU`` before and after the residual add) becomes one
    group with two outputs, which ``X86InductorQuantizer`` rejects. Copy ``i`` serves the
    ``i``-th call of each forward pass, so every call gets a module (and a name) of its own."""

    def __init__(self, module: nn.Module, calls: int):
        super().__init__()
        self.sites = nn.ModuleList(copy.deepcopy(module) for _ in range(calls))
        self._next = 0

    def forward(self, *args, **kwargs):
        site = self.sites[self._next]
        self._next = (self._next + 1) % len(self.sites)
        return site(*args, **kwargs)


def reused_modules(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Leaf modules that one forward pass of ``example`` calls more than once: {name: calls}."""
    calls: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules() if n and not any(m.children())}
    hooks = [m.register_forward_pre_hook(
        lambda mod, _args: calls.__setitem__(names[mod], calls.get(names[mod], 0) + 1))
        for m in names]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return {name: n for name, n in calls.items() if n > 1}


def unshare_modules(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in which every leaf module that one forward pass of ``example`` calls
    more than once is a ``CallSites``. Weight sharing (a module with parameters called twice) is
    an error: copies would no longer share their weights."""
    model = copy.deepcopy(model).eval()
    for name, n in reused_modules(model, example).items():
        module = model.get_submodule(name)
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) holds weights and is called {n} times "
                "per forward pass (weight sharing); PT2E's quantizers need one module per call. "
                "Give each call its own layer, or quantize with ONNX Runtime (ort_static).")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, CallSites(module, n))
    return model


def x86_quantizer():
    """torchao's ``X86InductorQuantizer`` with its default config (uint8 activations, per-channel
    int8 weights), imported without torchao's import-time registration chatter."""
    with _quiet_logs("torch.utils._pytree"):
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    return xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())


def pt2e_static(model: nn.Module, images: torch.Tensor, example: torch.Tensor | None = None):
    """The current PyTorch path (torchao PT2E) for any model: export the graph, annotate it with
    the x86 Inductor quantizer (uint8 activations, per-channel int8 weights), insert observers,
    calibrate on ``images``, convert to quantize/dequantize ops. ``torch.compile`` then fuses
    those into int8 kernels (see ``compile_fixed``). Returns the converted, uncompiled graph
    module, which accepts any batch size. Reused stateless modules are first given one copy per
    call (``unshare_modules``); nothing else about the model is assumed.

    On a Raspberry Pi the same flow takes an ARM quantizer instead: ExecuTorch's
    ``XNNPACKQuantizer`` (executorch.backends.xnnpack.quantizer.xnnpack_quantizer)."""
    release_memory()
    _check_calibration(images)
    quantizer = x86_quantizer()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    example = images[:2] if example is None else example
    m = unshare_modules(model, example)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with quiet():
        exported = torch.export.export(m, (example,), dynamic_shapes=({0: batch},)).module()
        prepared = prepare_pt2e(exported, quantizer)
        calibrate(prepared, images)
        return convert_pt2e(prepared)


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


def deprecation_notice() -> str | None:
    """The first line of the migration notice torch.ao.quantization prints, if it does."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(2, 2)), {nn.Linear})
    for w in caught:
        text = str(w.message).strip()
        if "migrat" in text.lower() or "deprecat" in text.lower():
            return " ".join(text.split())
    return None


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
    release_memory()
    import torch._inductor.config as inductor_config

    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="torch._inductor")
    compiled = torch.compile(model, dynamic=False)
    wrapped = FixedBatches(compiled, batch)
    t0 = time.perf_counter()
    # both shapes compile now, under freezing; the setting does not outlive this call
    with torch.inference_mode(), quiet(), inductor_config.patch(freezing=True):
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


# --------------------------------------------------------------------------------------------
# ONNX and ONNX Runtime
# --------------------------------------------------------------------------------------------

def export_onnx(model: nn.Module, path, example: torch.Tensor) -> Path:
    """Export with the dynamo exporter: one self-contained ``.onnx`` file, input ``image`` shaped
    like ``example`` but with a dynamic batch size, output ``logits``; written atomically."""
    release_memory()
    path = Path(path)
    if not isinstance(example, torch.Tensor) or example.dim() < 1:
        raise TypeError("example must be an input batch the model accepts, e.g. "
                        f"images[:2]; got {type(example).__name__}")
    if len(example) < 2:   # a batch of 1 would let the exporter specialise the batch to 1
        example = example.expand(2, *example.shape[1:])
    model = model.cpu().eval()
    with quiet(), _quiet_logs("torch.onnx", "onnxscript"), \
            contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(model, (example,), input_names=["image"],
                                    output_names=["logits"], dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    external_data=False)
    atomic_write_bytes(path, program.model_proto.SerializeToString())
    del program
    _clear_export_caches()   # the exporter runs torch.export: the caches PT2E fills
    release_memory()
    return path


@contextlib.contextmanager
def _quiet_logs(*names, level: int = logging.ERROR):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def session(path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimizations, ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: a little slower on an idle machine, far
    # steadier on a shared one (spinning threads fight over the cores).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory arena: it keeps the largest batch's activations for the session's life (100 MB
    # and more), and latency was the same without it.
    opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_static(fp32_path, out_path, images: torch.Tensor, per_channel: bool = True,
               activations: str = "uint8", batch_size: int = 16) -> Path:
    """ONNX Runtime post-training static quantization in QDQ format: int8 weights (per channel
    or per tensor), ``uint8`` or ``int8`` activations calibrated (MinMax) on ``images``."""
    release_memory()
    from onnxruntime import quantization as oq

    _check_calibration(images)
    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be 'uint8' or 'int8', got {activations!r}")

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
    with _quiet_logs("root"):
        oq.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        oq.quantize_static(str(pre), str(tmp), Reader(), quant_format=oq.QuantFormat.QDQ,
                           per_channel=per_channel,
                           activation_type=oq.QuantType.QUInt8 if activations == "uint8"
                           else oq.QuantType.QInt8,
                           weight_type=oq.QuantType.QInt8,
                           calibrate_method=oq.CalibrationMethod.MinMax)
    pre.unlink(missing_ok=True)
    os.replace(tmp, out_path)
    return out_path


# --------------------------------------------------------------------------------------------
# Small helpers for the notebook
# --------------------------------------------------------------------------------------------

def module_types(model: nn.Module, kinds=("Conv", "Linear")) -> dict[str, int]:
    """How many modules of each class (by qualified name) whose name contains one of ``kinds``."""
    out: dict[str, int] = {}
    for m in model.modules():
        cls = type(m)
        name = f"{cls.__module__}.{cls.__qualname__}"
        if any(k in cls.__name__ for k in kinds) and not cls.__name__.endswith("PackedParams"):
            out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


class Stopwatch:
    """``with Stopwatch() as t: ...`` then ``t.s``: wall seconds of a block."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
        return False
