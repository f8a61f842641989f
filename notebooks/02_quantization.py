# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Quantization: from the affine map to int8 that is really faster
#
# A trained ResNet18 stores every weight as a 32-bit float. Quantization stores them, and computes
# with them, as 8-bit integers (or fewer bits): four times fewer bytes, and on CPUs with int8
# instructions, faster arithmetic. Whether it *is* faster depends on the runtime and the kernels,
# so this notebook measures every variant on your machine.
#
# **You will learn**
# - the affine map behind every int8 model: scale, zero point, rounding and clamping; symmetric
#   vs asymmetric, per-tensor vs per-channel; and you will write quantize/dequantize yourself;
# - how few bits the teacher's weights survive, with a slider;
# - what dynamic quantization does to a CNN (the seed's call), and what it is for;
# - static post-training quantization: observers, calibration, the classic eager flow and the
#   current PT2E flow with `torch.compile`;
# - quantization-aware training (QAT), compared with post-training quantization at the same bits;
# - ONNX Runtime's int8, and why the activation type matters on an x86 CPU;
# - which variant to use.
#
# **Time:** about 5 minutes at the defaults on a 2-core laptop (most of it measuring accuracy on
# the full 10k test set); under a minute in smoke mode.

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "02_quantization"

# %%
import time
import warnings

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from edgelab import check, data, measure, models, qmath, quantize, report, runtime, widgets

measure.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

T_START = time.time()
EVAL_IMAGES = 200 if SMOKE else None      # None: the full 10k test set (every claim below)
LATENCY_S = 0.1 if SMOKE else 1.0         # seconds of timing per batch size
SLIDER_IMAGES = 32 if SMOKE else 200      # the slider's fixed subset of the validation set
CALIB_IMAGES = 32 if SMOKE else 256       # calibration images for static quantization
CALIB_SWEEP = [1, 16] if SMOKE else [1, 4, 16, 64, 256]
SWEEP_IMAGES = 100 if SMOKE else 1000     # validation images per point of the calibration sweep
QAT_STEPS = 3 if SMOKE else 100           # a live demo: a few minutes would do better
QAT_BITS = 4                              # QAT and PTQ are compared at this weight width
BUILD = data.REPO_ROOT / "build" / "cache" / NOTEBOOK
print(f"smoke mode: {SMOKE}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads")

# %%
teacher = models.load_checkpoint("teacher")
records = [measure.measure(teacher, "teacher", tags=["baseline", "fp32"], limit=EVAL_IMAGES,
                           min_run_time=LATENCY_S)]
t = records[0]
print(f"fp32 teacher: {100 * t['accuracy']:.2f} % on {t['test_images']:,} test images, "
      f"{t['bytes'] / 1e6:.1f} MB, {t['latency_b64_ms']:.0f} ms per batch of 64")

# %% [markdown]
# ## 1 · The affine map, by hand
#
# An integer code `q` stands for the real number `scale × (q − zero_point)`. To quantize a tensor
# to `b` bits, pick the range `[min, max]` to cover (widened to include 0), spread it over the
# `2^b − 1` steps between the codes, and round each value to its nearest code:
#
# - **asymmetric** (unsigned codes `0 … 2^b − 1`): `scale = (max − min) / (2^b − 1)`,
#   `zero_point = round(−min / scale)`, so that 0.0 is exactly a code: padding and ReLU make
#   many exact zeros, and they must stay zero;
# - **symmetric** (signed codes `−(2^(b−1) − 1) … 2^(b−1) − 1`): `zero_point = 0`,
#   `scale = max|x| / (2^(b−1) − 1)`; cheaper to multiply, the usual choice for weights;
# - `q = clamp(round(x / scale) + zero_point, qmin, qmax)` and back: `x̂ = scale × (q − zero_point)`.
#
# One scale for a whole tensor is **per-tensor**; one per output channel (one per convolution
# filter) is **per-channel**.

# %%
x = torch.tensor([-0.37, 0.0, 0.12, 0.5, 1.0])
scale, zero_point = qmath.qparams(x, bits=4)
q = qmath.quantize(x, scale, zero_point, *qmath.int_range(4, symmetric=False))
print(f"x      = {x.tolist()}")
print(f"scale  = {scale.item():.4f}, zero point = {zero_point.item():.0f}")
print(f"q      = {q.int().tolist()}   (4-bit codes, 0..15)")
print(f"x̂      = {[round(v, 4) for v in qmath.dequantize(q, scale, zero_point).tolist()]}")

# %% [markdown]
# How much of a real weight tensor survives? The error of one of the teacher's convolutions
# (relative to the weights' norm), against the bit width:

# %%
w = teacher.layer3[0].conv1.weight.detach()
bit_range = list(range(2, 9))
fig, ax = plt.subplots(figsize=(6, 3.5))
for label, kw in [("asymmetric, per-tensor", dict(symmetric=False)),
                  ("symmetric, per-tensor", dict(symmetric=True)),
                  ("symmetric, per-channel", dict(symmetric=True, axis=0))]:
    errs = [qmath.relative_error(w, qmath.quantize_dequantize(w, b, **kw)) for b in bit_range]
    ax.semilogy(bit_range, errs, marker="o", label=label)
ax.set_xlabel("bits"); ax.set_ylabel("‖w − ŵ‖ / ‖w‖"); ax.grid(alpha=0.3); ax.legend()
ax.set_title(f"layer3.0.conv1 weights {tuple(w.shape)}")
plt.show()
for kw, label in [(dict(symmetric=True), "per-tensor"), (dict(symmetric=True, axis=0), "per-channel")]:
    print(f"8-bit symmetric {label}: relative error "
          f"{qmath.relative_error(w, qmath.quantize_dequantize(w, 8, **kw)):.4f}")


# %% [markdown]
# Each extra bit halves the error. Per-channel scales help because filters differ in size: with
# one scale for the tensor, a small filter gets only a few of the codes.
#
# ### Your turn: quantize, then dequantize
#
# Write the asymmetric version: `bits`-bit unsigned codes, one scale and zero point for the whole
# tensor (`axis=None`) or one per slice along `axis` (reduce over every other dimension with
# `keepdim=True` so that they broadcast). Return the dequantized floats. Watch the zero point
# (an integer), the clamp, and a tensor that is all zeros.

# %%
def my_quantize_dequantize(x: torch.Tensor, bits: int, axis: int | None = None) -> torch.Tensor:
    # 1. min and max (over the whole tensor, or per slice along `axis`), widened to include 0
    # 2. scale = (max - min) / (2**bits - 1); zero_point = round(-min / scale)
    # 3. q = clamp(round(x / scale) + zero_point, 0, 2**bits - 1)
    # 4. return (q - zero_point) * scale
    raise NotImplementedError


# %%
fake_quant = check.quantize_dequantize(my_quantize_dequantize)
print(f"your function on the weights above, 8 bits per channel: relative error "
      f"{qmath.relative_error(w, fake_quant(w, 8, axis=0)):.4f}")

# %% [markdown]
# ## 2 · How few bits do the weights need? A slider
#
# The slider fake-quantizes every convolution and linear weight of a copy of the teacher
# (symmetric, to the chosen bits; activations stay fp32) and measures accuracy on a fixed subset
# of the validation set (choices such as "how few bits" are made there, never on the test set),
# so that it answers in under a second. The size is what the weights would take
# packed at that width, with their fp32 scales.

# %%
xs, ys = data.tensors("val", limit=SLIDER_IMAGES)
panel = widgets.bits_panel(teacher, xs, ys, bits=8, per_channel=True)
panel

# %% [markdown]
# Nobody moves a slider under papermill, so the notebook moves it itself: down from 8 bits, per
# channel and then per tensor, timing each response.

# %%
per_channel_curve = {8: panel.result["accuracy"]}
panel.sweep("bits", range(7, 1, -1))
per_channel_curve.update({h["bits"]: h["accuracy"] for h in panel.history[-6:]})
panel.set(granularity="per-tensor")
per_tensor_curve = {2: panel.result["accuracy"]}
panel.sweep("bits", range(3, 9))
per_tensor_curve.update({h["bits"]: h["accuracy"] for h in panel.history[-6:]})
times = sorted(panel.response_times)
bits_sweep = {"median_s": times[len(times) // 2], "max_s": times[-1], "moves": len(times)}
sweep_bits = list(range(8, 1, -1))
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(sweep_bits, [100 * per_channel_curve[b] for b in sweep_bits], marker="o", label="per-channel")
ax.plot(sweep_bits, [100 * per_tensor_curve[b] for b in sweep_bits], marker="s", label="per-tensor")
ax.set_xlabel("weight bits"); ax.set_ylabel(f"accuracy (%) on {len(xs)} validation images")
ax.invert_xaxis(); ax.grid(alpha=0.3); ax.legend()
plt.show()
print(f"{bits_sweep['moves']} moves, median response {bits_sweep['median_s']:.2f} s, "
      f"slowest {bits_sweep['max_s']:.2f} s")
for b in sweep_bits:
    print(f"{b} bits: per-channel {100 * per_channel_curve[b]:5.1f} %   "
          f"per-tensor {100 * per_tensor_curve[b]:5.1f} %")


# %%
def fewest_bits(curve, within_pt=1.0):
    """The fewest bits whose accuracy is within `within_pt` points of the 8-bit result."""
    return min(b for b in curve if 100 * (curve[8] - curve[b]) <= within_pt)

print(f"fewest weight bits within 1 pt of 8 bits: per-channel {fewest_bits(per_channel_curve)}, "
      f"per-tensor {fewest_bits(per_tensor_curve)} "
      f"(on {len(xs)} images one image is {100 / len(xs):.1f} pt, so smaller wiggles are noise)")

# %% [markdown]
# The weights alone survive far fewer bits than eight; the 2-bit row above shows how far they fall
# when pushed too far (chance is 10 %). Where
# per-tensor scales give out before per-channel ones, the small filters are the first casualties.
# The rest of this notebook uses 8 bits for weights *and* activations, the width CPU int8 kernels
# compute in.
#
# ## 3 · Dynamic quantization, honestly
#
# The blog post this workbook follows calls `quantize_dynamic(model, {nn.Linear, nn.Conv2d})` and
# says it quantizes the convolutions and needs a calibration step. Both are wrong. Count the layer
# types before and after:

# %%
# NBVAL_CHECK_OUTPUT
import torch.nn as nn
dynamic_model = quantize.dynamic(teacher, {nn.Linear, nn.Conv2d})
for label, types in [("before", quantize.module_types(teacher)),
                     ("after", quantize.module_types(dynamic_model))]:
    print(label)
    for kind, n in types.items():
        print(f"  {n:3d} x {kind}")

# %% [markdown]
# Does the call say anything about the convolutions it skipped? `quantize.dynamic` hides warnings
# (there are many deprecation notices), so here is the bare `torch.ao.quantization.quantize_dynamic`
# call the blog makes, with every warning recorded:

# %%
import copy

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    torch.ao.quantization.quantize_dynamic(copy.deepcopy(teacher), {nn.Linear, nn.Conv2d},
                                           dtype=torch.qint8)
messages = [f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught]
print(f"{len(messages)} warnings:")
for m in dict.fromkeys(messages):   # each distinct one once
    print(" ", m)
mentions_conv = [m for m in messages if "conv" in m.lower()]
print(f"warnings that mention a convolution: {len(mentions_conv)}")
n_conv = sum(isinstance(m, nn.Conv2d) for m in teacher.modules())
n_conv_after = sum(type(m) is nn.Conv2d for m in dynamic_model.modules())   # still float convs
print(f"float Conv2d modules: {n_conv} before, {n_conv_after} after quantize_dynamic")

# %%
records.append(measure.measure(dynamic_model, "dynamic", tags=["int8", "dynamic"],
                               limit=EVAL_IMAGES, min_run_time=LATENCY_S))
d = records[-1]
print(f"bytes: {t['bytes'] / 1e6:.2f} MB fp32 -> {d['bytes'] / 1e6:.2f} MB dynamic "
      f"({100 * (1 - d['bytes'] / t['bytes']):.2f} % smaller); "
      f"batch 64: {t['latency_b64_ms']:.0f} -> {d['latency_b64_ms']:.0f} ms")

# %% [markdown]
# `quantize_dynamic` has int8 kernels for `Linear` and recurrent layers only
# ([its docs](https://docs.pytorch.org/docs/stable/generated/torch.ao.quantization.quantize_dynamic.html)).
# Other types in the set are left as they are, and none of the warnings above says so: every
# convolution stays fp32 and only the final 10-way classifier is converted, so the file barely
# shrinks, and any change in latency is measurement noise: the convolutions, where the time goes,
# run exactly as before.
#
# Dynamic quantization is the right tool where the weights are in Linear/LSTM layers (transformers,
# RNNs): weights are stored in int8 ahead of time and each activation tensor is scaled **at run
# time**, from its own min and max. That is why it needs **no calibration**: the call above took no
# data. It also means an image's output depends on the other images in its batch, because they
# share the activation scale. Here is one validation image alone and then as the first of 64:

# %%
row_x = data.tensors("val", limit=64)[0]
with torch.no_grad():
    alone, in_batch = dynamic_model(row_x[:1])[0], dynamic_model(row_x)[0]
dynamic_row_diff = float((alone - in_batch).abs().max())
print(f"dynamic int8: the same image's logits differ by up to {dynamic_row_diff:.2e} "
      "between batch 1 and batch 64")
del dynamic_model

# %% [markdown]
# Calibration belongs to *static* quantization, next: its activation scales are fixed before any
# image arrives, so (as measured after the next cell) an image gets the same output in any batch.
#
# ## 4 · Static post-training quantization
#
# Static quantization fixes the activation scales ahead of time, so whole convolutions run in int8
# from input to output. Those scales come from **calibration**: observers placed after each layer
# record the range of the activations while a few hundred real images go through the network.
#
# ### The classic eager flow (`torch.ao.quantization`)
#
# 1. **fuse** Conv + BatchNorm (+ ReLU) into one convolution: batch norm folds into the weights;
# 2. attach a **qconfig**: which observer watches activations and weights. PyTorch's x86 default
#    (`get_default_qconfig("x86")`) watches activations with a histogram and stores them as uint8
#    with `reduce_range=True`: codes 0..127, 7 bits, which leaves headroom in the int16
#    intermediate sums of x86's u8×s8 `vpmaddubsw` instruction (printed below; the reason is in
#    [a comment of PyTorch's quantized-op tests](https://github.com/pytorch/pytorch/blob/c444e07ff3e67ff395069116435f6a87008ee45d/test/quantization/test_quantized_op.py));
#    weights are min/max, int8, per
#    channel or per tensor. PT2E's `X86InductorQuantizer` (below) uses the full 8 bits, and ONNX
#    Runtime's QDQ (part 6) is a third scheme, so the closing table compares three;
# 3. **prepare** inserts the observers, **calibrate** runs images through, **convert** swaps each
#    module for an int8 one with the scales the observers chose.
#
# PyTorch has deprecated this API (it prints a migration notice, shown once below) in favour of
# PT2E in torchao; it still runs and is the clearest picture of what happens. It needs a quantized
# CPU engine (`torch.backends.quantized.supported_engines`, printed below: x86 builds have `x86`
# and `fbgemm`, Arm builds such as the macOS arm64 wheels have `qnnpack`); on a build without
# one the notebook says so and carries on with ONNX Runtime in part 6.

# %%
try:
    ENGINE = quantize.quantized_engine()
    print(f"PyTorch quantized engine: {ENGINE} (this build supports "
          f"{torch.backends.quantized.supported_engines})")
except quantize.NoQuantizedEngine as e:
    ENGINE = None
    print(e)

if ENGINE:
    notice = quantize.deprecation_notice()
    print("torch.ao.quantization says:", (notice or "(no deprecation notice in this version)")[:300])

# %%
# NBVAL_CHECK_OUTPUT
if ENGINE:
    prepared = quantize.eager_prepare(teacher, per_channel=True)
    observers = [type(m).__name__ for m in prepared.modules()
                 if isinstance(m, torch.ao.quantization.ObserverBase)]
    fused = [m for m in prepared.modules() if isinstance(m, torch.ao.nn.intrinsic._FusedModule)]
    inside = {id(c) for f in fused for c in f.children()}   # a fused module's own conv: count once
    convs = [type(m).__name__ for m in prepared.modules()
             if "Conv" in type(m).__name__ and id(m) not in inside]
    print(f"after fusion: {len(convs)} convolutions ("
          + ", ".join(f"{convs.count(k)} {k}" for k in sorted(set(convs)))
          + f"), no BatchNorm modules left: "
          f"{not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())}")
    print(f"observers: {len(observers)} ({', '.join(sorted(set(observers)))})")
    with runtime.quiet():
        act = prepared.conv1.qconfig.activation()
    print(f"activation observer: {type(act).__name__}, {act.dtype}, reduce_range={act.reduce_range}: "
          f"codes {act.quant_min}..{act.quant_max}")
    del prepared  # a prepared copy of the teacher: 45 MB

# %% [markdown]
# How many calibration images are enough? Calibrate on N images (balanced over the classes),
# convert, and measure accuracy on a fixed subset:

# %%
sweep_x, sweep_y = data.tensors("val", limit=SWEEP_IMAGES)
calib_acc = []
if ENGINE:
    for n in CALIB_SWEEP:
        q_model = quantize.eager_static(teacher, data.calibration_set(n), per_channel=True)
        calib_acc.append(measure.accuracy_on(q_model, sweep_x, sweep_y))
    fp32_sweep = measure.accuracy_on(teacher, sweep_x, sweep_y)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogx(CALIB_SWEEP, [100 * a for a in calib_acc], marker="o", label="int8 (per-channel)")
    ax.axhline(100 * fp32_sweep, color="gray", ls=":", label="fp32")
    ax.set_xlabel("calibration images"); ax.set_ylabel(f"accuracy (%) on {SWEEP_IMAGES} validation images")
    ax.grid(alpha=0.3); ax.legend(); plt.show()
    for n, a in zip(CALIB_SWEEP, calib_acc):
        print(f"N = {n:5d}: {100 * a:.1f} %  (fp32 {100 * fp32_sweep:.1f} %)")
    del q_model

# %% [markdown]
# Is the curve flat? For this model and these activation observers (histograms, which ignore rare
# outliers) a handful of images can already be enough; models with outlier activations need more.
# A few hundred balanced images is the safe, cheap default. Now per-tensor against per-channel
# weights, both calibrated on the same images, each measured on the full test set:

# %%
calib = data.calibration_set(CALIB_IMAGES)
if ENGINE:
    for per_channel in (False, True):
        with runtime.Stopwatch() as sw:
            q_model = quantize.eager_static(teacher, calib, per_channel=per_channel)
        name = "ptq-per-channel" if per_channel else "ptq-per-tensor"
        tags = ["int8", "static"] + (["per-channel"] if per_channel else [])
        records.append(measure.measure(q_model, name, tags=tags, limit=EVAL_IMAGES,
                                       min_run_time=LATENCY_S, macs=t["macs"]))
        print(f"{name}: calibrated on {len(calib)} images and converted in {sw.s:.1f} s")
    display(report.table(records))
    with torch.no_grad():
        static_row_diff = float((q_model(row_x[:1])[0] - q_model(row_x)[0]).abs().max())
    print(f"static int8 ({name}): the same image's logits differ by {static_row_diff:.2e} between "
          f"batch 1 and batch 64 (dynamic: {dynamic_row_diff:.2e})")
    del q_model
else:
    static_row_diff = None

# %% [markdown]
# ### The current path: PT2E (torchao) and `torch.compile`
#
# PyTorch 2's flow captures the whole graph first, so the eager flow's stubs and
# `FloatFunctional`s are not needed:
# `torch.export` → a **quantizer** annotates the graph for a backend → `prepare_pt2e` inserts
# observers → calibrate → `convert_pt2e` leaves explicit quantize/dequantize ops → `torch.compile`
# (Inductor) fuses them with the convolutions into int8 kernels. The quantizer names the target:
# `X86InductorQuantizer` here; for a Raspberry Pi, ExecuTorch's `XNNPACKQuantizer`
# (`executorch.backends.xnnpack.quantizer`) targets the ARM kernels the Pi runs.
#
# One catch remains. The quantizer groups graph nodes by the module that produced them, and
# torchvision's `BasicBlock` calls one `ReLU` module twice, before and after the residual add
# ([its source](https://github.com/pytorch/vision/blob/main/torchvision/models/resnet.py)). Tried on
# the teacher exactly as torchvision builds it:

# %%
quantizer = quantize.x86_quantizer()
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

with runtime.quiet():
    plain_graph = torch.export.export(teacher, (calib[:2],)).module()
try:
    prepare_pt2e(plain_graph, quantizer)
    print("prepare_pt2e accepted the plain teacher")
except ValueError as e:
    print(f"prepare_pt2e on the plain teacher: ValueError: {e}")
reused = quantize.reused_modules(teacher, calib[:2])
print(f"modules called more than once per forward pass: {len(reused)}, e.g. "
      + ", ".join(f"{n} x{c}" for n, c in list(reused.items())[:3]))
del plain_graph, quantizer
runtime.release_compiled()

# %% [markdown]
# `quantize.pt2e_static` therefore first gives each call of a reused stateless module its own copy
# (`quantize.unshare_modules`, which works on any model); nothing else about the model changes.
#
# A cold `torch.compile` takes a while and is counted in this notebook's time. `compile_fixed`
# compiles with `dynamic=False`, so each new input shape would compile a new graph: the model is
# compiled for batch 1 and batch 64 and fed only those.

# %%
with runtime.Stopwatch() as sw:
    pt2e_graph = quantize.pt2e_static(teacher, calib)
ops = [str(n.target) for n in pt2e_graph.graph.nodes if n.op == "call_function"]
print(f"export + prepare + calibrate + convert: {sw.s:.1f} s; "
      f"{sum('quantize_per_tensor' in o for o in ops)} quantize and "
      f"{sum('dequantize' in o for o in ops)} dequantize ops in the graph")
pt2e_model, compile_s = runtime.compile_fixed(pt2e_graph, calib, batch=64)
print(f"torch.compile for batch 1 and 64: {compile_s:.0f} s")
records.append(measure.measure(
    pt2e_model, "pt2e-compiled", tags=["int8", "static", "per-channel"], limit=EVAL_IMAGES,
    min_run_time=LATENCY_S, artifact=runtime.graph_bytes(pt2e_graph),
    params=t["params"], nonzero=t["nonzero_params"], macs=t["macs"]))
display(report.table([t, records[-1]]))
if ENGINE:
    eager = report.find(records, "ptq-per-channel")
    print(f"compiled PT2E vs eager int8 at batch 64: {records[-1]['latency_b64_ms']:.1f} ms vs "
          f"{eager['latency_b64_ms']:.1f} ms; accuracy {100 * records[-1]['accuracy']:.2f} % vs "
          f"{100 * eager['accuracy']:.2f} %")
del pt2e_model, pt2e_graph
runtime.release_compiled()  # torch.compile keeps its graphs and kernels otherwise

# %% [markdown]
# ## 5 · Quantization-aware training
#
# Post-training quantization rounds weights that were never trained to sit on a grid. QAT inserts
# the rounding (fake quantization) into the forward pass and fine-tunes, so the weights learn to
# live with it. At 8 bits post-training quantization already loses almost nothing, so QAT has
# nothing to win there; the comparison below uses **4-bit weights** (still stored in int8, still
# run by the int8 kernels), with 8-bit activations, where post-training rounding costs accuracy.
# This is a short live run; a real QAT fine-tune runs for an epoch or more.

# %%
if ENGINE:
    ptq4 = quantize.eager_static(teacher, calib, per_channel=True, weight_bits=QAT_BITS)
    records.append(measure.measure(ptq4, f"ptq-w{QAT_BITS}", tags=["int8", "static", "per-channel"],
                                   limit=EVAL_IMAGES, min_run_time=LATENCY_S, macs=t["macs"]))
    del ptq4  # one model in memory at a time: each copy of the teacher is 45 MB or more
    qat_model = quantize.qat_prepare(teacher, per_channel=True, weight_bits=QAT_BITS)
    batches = data.loader("train", batch_size=32, flip=True, seed=0)
    with runtime.Stopwatch() as sw:
        losses = quantize.qat_finetune(qat_model, batches, steps=QAT_STEPS, lr=1e-3)
    qat_int8 = quantize.eager_convert(qat_model)
    del qat_model
    records.append(measure.measure(qat_int8, f"qat-w{QAT_BITS}", tags=["int8", "qat", "per-channel"],
                                   limit=EVAL_IMAGES, min_run_time=LATENCY_S, macs=t["macs"]))
    del qat_int8
    p4, q4 = records[-2], records[-1]
    print(f"{QAT_STEPS} QAT steps of 32 images in {sw.s:.0f} s; loss {losses[0]:.3f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.3f} (mean of the last 10)")
    print(f"{QAT_BITS}-bit weights: post-training {100 * p4['accuracy']:.2f} %, "
          f"after QAT {100 * q4['accuracy']:.2f} %, fp32 {100 * t['accuracy']:.2f} %")

# %% [markdown]
# ## 6 · ONNX Runtime int8
#
# ONNX Runtime is what runs the model on the Pi in notebook 05. Its static quantization works on
# the exported graph: calibrate, then write **QDQ** pairs (QuantizeLinear / DequantizeLinear)
# around each operator, which the runtime fuses into int8 kernels. Weights are int8 per channel;
# the activations can be **uint8** or **int8**, and on x86 that choice matters: the fast
# integer instructions of many x86 CPUs (AVX2 / AVX-512 VNNI) multiply unsigned by signed bytes.
# The teacher is measured again in ONNX Runtime, so each ratio is runtime against the same runtime.

# %%
BUILD.mkdir(parents=True, exist_ok=True)
fp32_onnx = runtime.export_onnx(teacher, BUILD / "teacher.onnx", calib[:2])
int8_onnx = {act: runtime.ort_static(fp32_onnx, BUILD / f"teacher-int8-{act}.onnx", calib,
                                      per_channel=True, activations=act)
             for act in ("uint8", "int8")}
counts = dict(params=t["params"], nonzero=t["nonzero_params"], macs=t["macs"])
records.append(measure.measure(runtime.session(fp32_onnx), "teacher", tags=["baseline", "fp32", "onnx"],
                               limit=EVAL_IMAGES, min_run_time=LATENCY_S, artifact=fp32_onnx, **counts))
for act, path in int8_onnx.items():
    records.append(measure.measure(runtime.session(path), f"ort-int8-{act}-act",
                                   tags=["int8", "static", "per-channel", "onnx"], limit=EVAL_IMAGES,
                                   min_run_time=LATENCY_S, artifact=path, **counts))
display(report.table([r for r in records if r["runtime"] == "onnxruntime"]))

# %% [markdown]
# ## 7 · Everything side by side
#
# Ratios are against the fp32 teacher **in the same runtime**, measured in this run.

# %%
display(report.table(records))
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
report.plot(records, x="bytes", ax=axes[0])
report.plot(records, x="latency_b64_ms", ax=axes[1])
axes[0].set_title("accuracy against file size"); axes[1].set_title("accuracy against batch-64 latency")
plt.show()

# %% [markdown]
# **The bars.** The best static int8 model in each runtime should be at least 3.5× smaller and
# 1.5× faster at batch 64 than the fp32 teacher in that runtime, within 0.5 points of its accuracy:

# %%
bars = report.int8_static_bars(records)
for engine, b in bars.items():
    print(f"{engine:>11}: {b['name']}: {b['smaller']:.2f}x smaller, {b['faster_b64']:.2f}x faster "
          f"at batch 64, {b['delta_pt']:+.2f} pt -> {'met' if b['met'] else 'NOT met'}")
if SMOKE:
    print("(smoke mode: small test subset and short timings; the bars are judged at the defaults)")

# %% [markdown]
# ### Which one should I use?
#
# - **A CNN on a CPU (this teacher, the Pi):** static int8 with per-channel weights and a few
#   hundred calibration images. Deploying with ONNX Runtime: QDQ with uint8 activations on x86,
#   and measure both activation types on the target, since ARM kernels differ. Staying in
#   PyTorch: PT2E with the quantizer for your backend, then `torch.compile`.
# - **Transformers, LSTMs, models that are mostly Linear layers:** dynamic quantization, no
#   calibration needed.
# - **Accuracy lost after post-training quantization** (fewer than 8 bits, small or sensitive
#   models): QAT, starting from the trained weights.
#
# ### "Mixed-precision training" as a way to deploy (the blog's last method)
#
# Mixed-precision *training* runs parts of training in fp16 or bf16 to train faster and in less
# memory on GPUs ([PyTorch's AMP docs](https://docs.pytorch.org/docs/stable/amp.html)); the
# checkpoint it writes is fp32 and ships at full size. Two things the blog's item could fairly mean
# for deployment, measured on `MIXED_VAL` validation images:
#
# 1. **16-bit weights**: store every float tensor in fp16 or bf16 (half the file) and compute in
#    fp32 after loading;
# 2. **mixed precision in the quantization sense**: a bit width per layer, chosen from a
#    sensitivity measurement, at the same weight bytes as uniform 4-bit.

# %%
MIXED_VAL = 256 if SMOKE else 2000
SENS_IMAGES = 64 if SMOKE else 256
mx, my = data.tensors("val", limit=MIXED_VAL)
fp32_val = measure.accuracy_on(teacher, mx, my)
half_rows = {}
for dtype in (torch.float16, torch.bfloat16):
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in teacher.state_dict().items()}
    stored = measure.saved_size(sd)
    back = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    acc = measure.accuracy_on(qmath.with_weights(teacher, back), mx, my)
    half_rows[str(dtype).split(".")[1]] = {"bytes_vs_fp32": stored / t["bytes"], "val_accuracy": acc}
    print(f"{str(dtype):15s} weights: file {stored / 1e6:.1f} MB ({stored / t['bytes']:.0%} of fp32), "
          f"accuracy {100 * acc:.2f} % (fp32 {100 * fp32_val:.2f} %)")
del sd, back

# sensitivity: each layer alone at 2 bits (per-channel), the others fp32
originals = {k: w.detach() for k, w in qmath.quantizable_weights(teacher).items()}
sizes = {k: w.numel() for k, w in originals.items()}
base_sens = measure.accuracy_on(teacher, mx[:SENS_IMAGES], my[:SENS_IMAGES])
drop2 = {}
for k, w in originals.items():
    fake = {k: qmath.quantize_dequantize(w, 2, axis=0, symmetric=True)}
    drop2[k] = base_sens - measure.accuracy_on(qmath.with_weights(teacher, fake),
                                               mx[:SENS_IMAGES], my[:SENS_IMAGES])
mixed = qmath.mixed_bits(drop2, sizes, budget_bits=4 * sum(sizes.values()))


def at_bits(widths):   # the teacher with each Conv/Linear weight fake-quantized at its width
    return qmath.with_weights(teacher, {k: qmath.quantize_dequantize(
        originals[k], widths[k], axis=0, symmetric=True) for k in originals})


uniform4 = dict.fromkeys(originals, 4)
mixed_rows = {}
for label, widths in [("uniform 4-bit", uniform4), ("mixed, same bytes", mixed)]:
    mixed_rows[label] = {"weight_bytes": qmath.weight_bytes(teacher, widths, per_channel=True),
                         "val_accuracy": measure.accuracy_on(at_bits(widths), mx, my)}
    r = mixed_rows[label]
    print(f"{label:18s} weights {r['weight_bytes'] / 1e6:.2f} MB, accuracy {100 * r['val_accuracy']:.2f} %")
print("widths chosen: " + ", ".join(f"{b} bits x {sum(1 for v in mixed.values() if v == b)}"
                                    for b in sorted(set(mixed.values()))))
gap = mixed_rows["mixed, same bytes"]["val_accuracy"] - mixed_rows["uniform 4-bit"]["val_accuracy"]
print(f"mixed minus uniform: {100 * gap:+.2f} pt on {MIXED_VAL} validation images "
      f"(one image is {100 / MIXED_VAL:.2f} pt)")

# %% [markdown]
# 16-bit weights halve the file at an accuracy you can read above. Per-layer widths spend the same
# bytes as uniform 4-bit where the sensitivity scan says they matter, and the last line says whether
# that beat uniform widths in this run: one layer's accuracy drop at 2 bits, on a few hundred
# images, is a coarse guide to how it behaves at 3 to 8 bits together with the others, so a choice
# made this way can lose to the uniform one. Neither is what the blog calls mixed-precision
# *training*, which changes how fast a model trains, not what ships.

# %% [markdown]
# ## Save this run's records

# %%
seed_claims = {
    "2": report.seed_claim(
        "torch.ao.quantization.quantize_dynamic(teacher, {nn.Linear, nn.Conv2d}, dtype=torch.qint8)",
        {"conv2d_before": n_conv, "conv2d_after": n_conv_after, "warnings": len(messages),
         "warnings_mentioning_conv": len(mentions_conv),
         "bytes_vs_fp32": report.find(records, "dynamic")["bytes"] / t["bytes"]}),
    "3": report.seed_claim(
        "one validation image through int8 models alone and as the first of 64 images",
        {"dynamic_max_logit_diff": dynamic_row_diff, "static_max_logit_diff": static_row_diff,
         "dynamic_calibration_images": 0}),
    "7": report.seed_claim(
        "the teacher's weights stored in fp16/bf16, and per-layer widths from a 2-bit sensitivity "
        "scan at uniform 4-bit's bytes, on validation images",
        {"val_images": MIXED_VAL, "fp32_val_accuracy": fp32_val, "16_bit": half_rows,
         "bits_per_layer": mixed_rows}),
}
path = report.write_notebook_results(NOTEBOOK, records, widgets={"bits": bits_sweep}, smoke=SMOKE,
                                     seed_claims=seed_claims)
print(f"wrote {len(records)} records to {path.relative_to(path.parents[2])}; "
      f"notebook body ran in {time.time() - T_START:.0f} s")

# %% [markdown]
# **Next:** [03 · Distillation](03_distillation.ipynb) trains a much smaller student to imitate
# this teacher; quantizing that student stacks the savings.
