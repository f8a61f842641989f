"""Quantization flows in PyTorch: dynamic, static post-training (eager ``torch.ao.quantization``
and PT2E from torchao, for any model) and quantization-aware training. The numbers they rest on
are in ``edgelab.qmath``; exporting and running the results in ``edgelab.runtime``.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from .qmath import check_bits
from .runtime import check_calibration, quiet, quiet_logs

__all__ = ["NoQuantizedEngine", "quantized_engine", "quantizable_teacher", "dynamic",
           "MSEPerChannelObserver", "eager_qconfig", "calibrate", "eager_prepare", "eager_convert", "eager_static",
           "qat_prepare", "qat_finetune", "WeightFakeQuant", "weight_fake_quant", "bake_weights",
           "CallSites", "reused_modules", "unshare_modules",
           "x86_quantizer", "pt2e_static", "deprecation_notice", "module_types"]


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------

class NoQuantizedEngine(RuntimeError):
    pass


def _supported_engines() -> list[str]:
    return list(torch.backends.quantized.supported_engines)


def quantized_engine(preferred=("x86", "fbgemm", "onednn", "qnnpack")) -> str:
    """Select PyTorch's int8 CPU kernels (x86 on Intel/AMD, qnnpack on ARM) or raise
    NoQuantizedEngine with what to do instead, on a build that has none."""
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


# --------------------------------------------------------------------------------------------
# The PyTorch flows
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
    with quiet():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), set(layers),
                                                      dtype=torch.qint8)


class MSEPerChannelObserver(torch.ao.quantization.PerChannelMinMaxObserver):
    """Per-channel symmetric weight ranges clipped where each channel's squared error is least
    (``qmath.mse_clip``) instead of MinMax's full range: post-training quantization's standard
    answer to a few outlying weights at low bit widths."""

    def forward(self, x):
        self._weight = x.detach()
        return super().forward(x)

    @torch.jit.export
    def calculate_qparams(self):
        from .qmath import mse_clip

        bits = int(self.quant_max - self.quant_min + 1).bit_length() - 1
        t = mse_clip(self._weight, bits, axis=self.ch_axis)
        return self._calculate_qparams(-t, t)


def eager_qconfig(per_channel: bool, qat: bool = False, weight_bits: int = 8,
                  weight_range: str = "minmax"):
    """x86 defaults: histogram observer for activations (uint8), MinMax for weights (signed,
    symmetric, ``weight_bits`` wide, stored in int8), per output channel or per tensor.
    ``weight_range="mse"`` clips each channel's range where its squared error is least."""
    if weight_range not in ("minmax", "mse"):
        raise ValueError(f"weight_range is 'minmax' or 'mse', got {weight_range!r}")
    if weight_range == "mse" and (qat or not per_channel):
        raise ValueError("weight_range='mse' is for post-training, per-channel weights")
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
            if weight_range == "mse":
                observer = MSEPerChannelObserver
            weight = observer.with_args(dtype=torch.qint8, qscheme=scheme, quant_min=qmin,
                                        quant_max=qmax)
        return tq.QConfig(activation=base.activation, weight=weight)


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Run the calibration images through a prepared model so its observers see real ranges."""
    check_calibration(images)
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size])
    return model


def eager_prepare(teacher: nn.Module, per_channel: bool = True, weight_bits: int = 8,
                  weight_range: str = "minmax") -> nn.Module:
    """Fuse Conv+BN(+ReLU), attach observers (a copy; the teacher is untouched)."""
    quantized_engine()
    m = quantizable_teacher(teacher)
    with quiet():
        m.fuse_model()
        m.qconfig = eager_qconfig(per_channel, weight_bits=weight_bits, weight_range=weight_range)
        torch.ao.quantization.prepare(m, inplace=True)
    return m


def eager_convert(prepared: nn.Module) -> nn.Module:
    """Swap observed float modules for int8 ones with the ranges the observers saw, in place:
    ``prepared`` is consumed (a copy would hold a second float model, and its gradients after
    QAT, at the notebook's memory peak)."""
    prepared.zero_grad(set_to_none=True)
    with quiet():
        return torch.ao.quantization.convert(prepared.eval(), inplace=True)


def eager_static(teacher: nn.Module, images: torch.Tensor, per_channel: bool = True,
                 weight_bits: int = 8, weight_range: str = "minmax") -> nn.Module:
    """Post-training static quantization with the eager flow: fuse, observe, calibrate, convert."""
    check_calibration(images)
    return eager_convert(calibrate(eager_prepare(teacher, per_channel, weight_bits, weight_range),
                                   images))


def qat_prepare(teacher: nn.Module, per_channel: bool = True, weight_bits: int = 8) -> nn.Module:
    """Fuse Conv+BN(+ReLU) for training and insert fake-quantize modules (a copy)."""
    quantized_engine()
    m = quantizable_teacher(teacher).train()
    with quiet():
        m.fuse_model(is_qat=True)
        m.qconfig = eager_qconfig(per_channel, qat=True, weight_bits=weight_bits)
        torch.ao.quantization.prepare_qat(m, inplace=True)
    return m


def qat_finetune(prepared: nn.Module, batches, steps: int, lr: float = 1e-3,
                 freeze_bn_after: float = 0.5, observe_until: float = 0.75,
                 callbacks=()) -> list[float]:
    """A short fine-tune with fake quantization in the forward pass: the weights learn to sit
    well on the int8 grid. Batch-norm statistics freeze halfway, the observers after 3/4 of the
    steps (the usual recipe), so the last steps train against fixed ranges. Returns each step's
    loss; the loop is ``edgelab.loop.run``."""
    from . import loop

    if steps < 1:
        raise ValueError(f"QAT needs at least 1 step, got {steps}")
    opt = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=0.9)
    cbs = [loop.FreezeBatchNorm(int(freeze_bn_after * steps)),
           loop.FreezeObservers(int(observe_until * steps)), *callbacks]
    return loop.run(prepared, batches, opt, steps=steps, callbacks=cbs).losses


class WeightFakeQuant(nn.Module):
    """A parametrization: the weight the forward pass sees is rounded to the int8 grid, one
    symmetric scale per output channel (max |w| / 127, the grid ONNX Runtime's per-channel
    static quantization uses). The straight-through estimator passes gradients unchanged."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = check_bits(bits)

    def forward(self, w):
        from .qmath import quantize_dequantize
        return w + (quantize_dequantize(w, self.bits, axis=0, symmetric=True) - w).detach()


def weight_fake_quant(model: nn.Module, bits: int = 8) -> nn.Module:
    """Weight-only quantization-aware training for any model, in place: every Conv2d and Linear
    trains through ``WeightFakeQuant``. Any model works (no fusing, no rebuilt architecture).

    Per-channel symmetric rounding commutes with batch-norm folding (folding multiplies each
    output channel by one constant), so weights on this grid stay on ONNX Runtime's grid after
    it folds the batch norms. Activations are not fake-quantized: they are calibrated after."""
    from torch.nn.utils import parametrize

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    for m in layers:
        parametrize.register_parametrization(m, "weight", WeightFakeQuant(bits))
    return model


def bake_weights(model: nn.Module) -> nn.Module:
    """Remove ``weight_fake_quant``'s parametrizations, keeping the rounded weights."""
    from torch.nn.utils import parametrize

    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


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
    with quiet_logs("torch.utils._pytree"):
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
    check_calibration(images)
    quantizer = x86_quantizer()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    example = images[:2] if example is None else example
    m = unshare_modules(model, example)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with quiet():
        exported = torch.export.export(m, (example,), dynamic_shapes=({0: batch},)).module()
        prepared = prepare_pt2e(exported, quantizer)
        calibrate(prepared, images)
        converted = convert_pt2e(prepared)
    return _with_train_eval(converted)


def _with_train_eval(gm):
    """An exported graph refuses ``.train()``/``.eval()``; give it torchao's replacements, which
    switch dropout and batch norm in the graph, returning the module as nn.Module's do, so that it
    can be measured and evaluated like any other."""
    import types

    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    def train(self, mode: bool = True):
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        return self

    gm.train = types.MethodType(train, gm)
    gm.eval = types.MethodType(lambda self: self.train(False), gm)
    return gm


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


