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
# # 02 · Quantization flows: int8 that is really smaller and faster
#
# [02 · Quantization](02_quantization.ipynb) built the affine map and showed how few bits the
# weights survive. Here whole convolutions run in int8: static post-training quantization in
# PyTorch's classic eager flow and in PT2E with `torch.compile`, torchao's `quantize_`,
# quantization-aware training against a clipped post-training baseline, and ONNX Runtime with
# both activation types. Every variant is measured on your machine, because whether int8 *is*
# faster depends on the runtime, the kernels and the CPU.
#
# **You will learn**
# - static post-training quantization: observers, calibration, the eager flow and PT2E;
# - torchao's two entry points, PT2E and `quantize_`;
# - QAT against post-training quantization at the same bits, and the straight-through estimator
#   that lets rounding be trained through;
# - ONNX Runtime's int8, and what the activation type does on this CPU;
# - which variant to use.
#
# **Time:** about 3 minutes at the defaults on a 2-core laptop (most of it measuring accuracy on
# the full 10k test set); under a minute in smoke mode.

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "02_quantization_flows"

# %%
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from IPython.display import display

from edgelab import calibration, data, figures, measure, models, quantize, report, runtime
from edgelab import evaluation, latency, memory, plots, tables, targets
from edgelab.records import find

memory.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

T_START = time.time()
EVAL_IMAGES = 200 if SMOKE else None      # None: the full 10k test set (every claim below)
VAL_IMAGES = 200 if SMOKE else 2000       # validation images for choices between variants
LATENCY_S = 0.1 if SMOKE else 1.0         # seconds of timing per batch size
CALIB_IMAGES = 32 if SMOKE else 256       # calibration images for static quantization
CALIB_SWEEP = [1, 16] if SMOKE else [1, 4, 16, 64, 256]
SWEEP_IMAGES = 100 if SMOKE else 1000     # validation images per point of the calibration sweep
QAT_STEPS = 4 if SMOKE else 150           # a live demo: a few minutes would do better
QAT_BATCH = 16                            # small batches keep the backward pass under the memory bar
QAT_BITS = 4                              # QAT and PTQ are compared at this weight width
print(f"smoke mode: {SMOKE}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads")

# %%
teacher = models.load_checkpoint("teacher")
records = [measure.measure(teacher, "teacher", tags=["baseline", "fp32"], limit=EVAL_IMAGES,
                           min_run_time=LATENCY_S)]
t = records[0]
print(f"fp32 teacher: {100 * t['accuracy']:.2f} % on {t['test_images']:,} test images, "
      f"{t['bytes'] / 1e6:.1f} MB, {t['latency_b64_ms']:.0f} ms per batch of 64")

# %% [markdown]
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
# PyTorch has deprecated this API: its notice, printed below exactly as the installed version
# words it, names a removal version that the installed torch may already be past, and sends eager
# users to torchao's `quantize_` and graph users to PT2E. It still runs here and is the clearest
# picture of what happens. It needs a quantized
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
    print(f"torch {torch.__version__.split('+')[0]}; torch.ao.quantization says:\n"
          + (notice or "(no deprecation notice in this version)"))

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
        calib_acc.append(evaluation.accuracy_on(q_model, sweep_x, sweep_y))
    fp32_sweep = evaluation.accuracy_on(teacher, sweep_x, sweep_y)
    fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.6))
    figures.accuracy_errorbar(ax, CALIB_SWEEP, calib_acc, SWEEP_IMAGES, ls="-", label="int8 (per-channel)")
    figures.log_axis(ax, "x")
    se = 100 * figures.accuracy_se(fp32_sweep, SWEEP_IMAGES)
    ax.axhspan(100 * fp32_sweep - se, 100 * fp32_sweep + se, color="0.85", label="fp32 ±1 SE")
    ax.set_xlabel("calibration images"); ax.set_ylabel(f"accuracy (%)\n{SWEEP_IMAGES:,} val. images, ±1 SE")
    spread = 100 * (max(calib_acc) - min(calib_acc))
    ax.set_title(f"Calibration size moves accuracy by {spread:.2f} points "
                 f"(one SE is {se:.2f})")
    ax.legend(loc="lower right"); figures.show(fig)
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
eager_int8 = {}   # int8 copies are 11 MB each: kept, so that models of one architecture are timed together
if ENGINE:
    for per_channel in (False, True):
        with runtime.Stopwatch() as sw:
            q_model = quantize.eager_static(teacher, calib, per_channel=per_channel)
        name = "ptq-per-channel" if per_channel else "ptq-per-tensor"
        tags = ["int8", "static"] + (["per-channel"] if per_channel else [])
        records.append(measure.measure(q_model, name, tags=tags, limit=EVAL_IMAGES,
                                       batch_sizes=(), macs=t["macs"]))
        eager_int8[name] = q_model
        print(f"{name}: calibrated on {len(calib)} images and converted in {sw.s:.1f} s")
    latency.remeasure_latency(records, eager_int8, min_run_time=LATENCY_S)
    display(tables.table(records))
    del q_model

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
display(tables.table([t, records[-1]]))
if ENGINE:
    eager = find(records, "ptq-per-channel")
    print(f"compiled PT2E vs eager int8 at batch 64: {records[-1]['latency_b64_ms']:.1f} ms vs "
          f"{eager['latency_b64_ms']:.1f} ms; accuracy {100 * records[-1]['accuracy']:.2f} % vs "
          f"{100 * eager['accuracy']:.2f} %")
del pt2e_model, pt2e_graph
runtime.release_compiled()  # torch.compile keeps its graphs and kernels otherwise

# %% [markdown]
# ### torchao's other entry point: `quantize_`
#
# torchao has two ways in. PT2E (above) works on an exported graph and suits static int8 for
# CNNs. [`quantize_`](https://docs.pytorch.org/ao/stable/api_ref_quantization.html) swaps the
# weights of the model's own modules for quantized tensor subclasses, in place and without
# export; it is the entry point the deprecation notice sends eager users to. Its configs target
# `Linear` layers by default (the `filter_fn` argument chooses others), so on this CNN it converts
# only the classifier:

# %%
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

val_x, val_y = data.tensors("val", limit=VAL_IMAGES)
ao_rows = {}
for config in (Int8WeightOnlyConfig(), Int8DynamicActivationInt8WeightConfig()):
    m = models.load_checkpoint("teacher")
    quantize_(m, config)
    changed = [n for n, mod in m.named_modules()
               if isinstance(getattr(mod, "weight", None), torch.Tensor)
               and type(mod.weight) not in (torch.Tensor, nn.Parameter)]
    with torch.no_grad():   # in batches: one forward pass of 2,000 images would hold GBs
        pred = torch.cat([m(val_x[i:i + 64]).argmax(1) for i in range(0, len(val_x), 64)])
    acc = float((pred == val_y).float().mean())
    ao_rows[type(config).__name__] = {"layers": changed, "weight_type": type(m.fc.weight).__name__,
                                      "val_accuracy": acc}
    print(f"{type(config).__name__}: converted {changed} to {type(m.fc.weight).__name__}; "
          f"accuracy {100 * acc:.2f} % on {len(val_y):,} validation images")
    del m
print(f"fp32 teacher on the same images: {100 * evaluation.accuracy_on(teacher, val_x, val_y):.2f} %")

# %% [markdown]
# The convolutions, where this network spends its time and bytes, stay fp32 under `quantize_`'s
# defaults; for a CNN's static int8, PT2E (or ONNX Runtime, part 6) is the path. For a
# transformer, whose weights are mostly `Linear`, `quantize_` is.

# %% [markdown]
# ## 5 · Quantization-aware training
#
# Post-training quantization rounds weights that were never trained to sit on a grid. QAT inserts
# the rounding (fake quantization) into the forward pass and fine-tunes, so the weights learn to
# live with it. At 8 bits post-training quantization already loses almost nothing, so QAT has
# nothing to win there; the comparison below uses **4-bit weights** (still stored in int8, still
# run by the int8 kernels), with 8-bit activations, where post-training rounding costs accuracy.
# This is a short live run; a real QAT fine-tune runs for an epoch or more.

# %% [markdown]
# **How can rounding be trained through?** Its derivative is zero almost everywhere, so plain
# backpropagation through fake quantization would stop every gradient. QAT uses the
# **straight-through estimator** (Bengio et al., 2013, [arXiv:1308.3432](https://arxiv.org/abs/1308.3432)):
# the forward pass rounds, the backward pass treats rounding as the identity inside the
# quantization range and passes nothing for values that were clipped. PyTorch's own
# `torch.fake_quantize_per_tensor_affine`, which QAT's `FakeQuantize` modules call, shows it:

# %%
x_ste = torch.linspace(-1.5, 1.5, 13, requires_grad=True)
y_ste = torch.fake_quantize_per_tensor_affine(x_ste, scale=0.25, zero_point=0, quant_min=-4, quant_max=3)
y_ste.sum().backward()
print("x        ", [round(v, 2) for v in x_ste.tolist()])
print("fake q(x)", [round(v, 2) for v in y_ste.tolist()])
print("gradient ", [int(g) for g in x_ste.grad.tolist()],
      f"(1 inside [{-4 * 0.25}, {3 * 0.25}], 0 where clipped)")

# %% [markdown]
# A fair post-training baseline at 4 bits is not plain MinMax. MinMax lets each channel's largest
# weight set its step; **clipping** the range where each channel's squared rounding-plus-clipping
# error is least (`qmath.mse_clip`, searched per channel) is the standard post-training answer.
# Both baselines and QAT, at the same bits, calibration images and kernels:

# %%
if ENGINE:
    for wr, suffix in (("minmax", ""), ("mse", "-mse-clip")):
        ptq4 = quantize.eager_static(teacher, calib, per_channel=True, weight_bits=QAT_BITS,
                                     weight_range=wr)
        records.append(measure.measure(ptq4, f"ptq-w{QAT_BITS}{suffix}", tags=["int8", "static", "per-channel"],
                                       limit=EVAL_IMAGES, batch_sizes=(), macs=t["macs"],
                                       val=VAL_IMAGES))
        eager_int8[records[-1]["name"]] = ptq4
        del ptq4
        memory.release_memory()   # the conversion's copies of the teacher sit in reference cycles

# %% [markdown]
# And QAT: the same 4-bit weights, fine-tuned with fake quantization in the forward pass.

# %%
if ENGINE:
    qat_model = quantize.qat_prepare(teacher, per_channel=True, weight_bits=QAT_BITS)
    del teacher   # QAT trains its own copy; the fp32 teacher's 45 MB come back after it
    memory.release_memory()
    batches = data.loader("train", batch_size=QAT_BATCH, flip=True, seed=0)
    with runtime.Stopwatch() as sw:
        losses = quantize.qat_finetune(qat_model, batches, steps=QAT_STEPS, lr=1e-3)
    qat_int8 = quantize.eager_convert(qat_model)
    del qat_model
    memory.release_memory()
    teacher = models.load_checkpoint("teacher")
    records.append(measure.measure(qat_int8, f"qat-w{QAT_BITS}", tags=["int8", "qat", "per-channel"],
                                   limit=EVAL_IMAGES, batch_sizes=(), macs=t["macs"],
                                   val=VAL_IMAGES))
    eager_int8[records[-1]["name"]] = qat_int8
    del qat_int8

# %%
if ENGINE:
    # the eager int8 models, timed together in turns: the four per-channel ones share an architecture
    latency.remeasure_latency(records, eager_int8, min_run_time=2 * LATENCY_S)
    del eager_int8
    p4, c4, q4 = records[-3], records[-2], records[-1]
    print(f"{QAT_STEPS} QAT steps of {QAT_BATCH} images in {sw.s:.0f} s; loss {losses[0]:.3f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.3f} (mean of the last 10)")
    for r in (p4, c4, q4):
        print(f"{r['name']:>18}: validation {100 * r['val_accuracy']:.2f} %, "
              f"test {100 * r['accuracy']:.2f} %  ({tables.paired_delta(r, t)[0]:+.2f} pt vs fp32 on test)")
    best_ptq = max((p4, c4), key=lambda r: r["val_accuracy"])
    d, se = tables.paired_delta(q4, best_ptq)
    print(f"QAT minus the better post-training baseline on validation ({best_ptq['name']}): "
          f"{100 * (q4['val_accuracy'] - best_ptq['val_accuracy']):+.2f} pt; on test {d:+.2f}"
          + (f" ±{se:.2f} pt (paired SE)" if se is not None else " pt"))

# %% [markdown]
# Read QAT against the *better* post-training baseline, chosen on validation: a gain measured
# against plain MinMax alone overstates what the training buys, because part of it is what a
# clipped range gets for free. The table at the end has all three on the full test set.
#
# ## 6 · ONNX Runtime int8
#
# ONNX Runtime is what runs the model on the Pi in notebook 05. Its static quantization works on
# the exported graph: calibrate, then write **QDQ** pairs (QuantizeLinear / DequantizeLinear)
# around each operator, which the runtime fuses into int8 kernels. Weights are int8 per channel;
# the activations can be **uint8** (U8S8) or **int8** (S8S8). ONNX Runtime's docs make S8S8
# the default and first choice, and warn that U8S8 can saturate on x86 CPUs with AVX2 or
# AVX-512 but without VNNI, where per-channel U8S8 then needs `reduce_range`
# ([ONNX Runtime: data type selection](https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html)).
# Which one is faster depends on the CPU's integer instructions, so first what this CPU has:

# %%
isa = runtime.cpu_isa()
print(f"{isa['machine']}; PyTorch dispatches to {isa['torch_capability']}; VNNI: {isa['vnni']}; "
      f"flags: {', '.join(isa['flags']) or '(none of the int8-relevant ones)'}")
print("so the uint8 file below keeps " + ("7-bit weights (reduce_range): its U8S8 kernels could "
                                          "saturate here" if runtime.u8s8_saturates() else
                                          "8-bit weights: U8S8 does not saturate here"))

# %% [markdown]
# Both activation types, each with per-channel int8 weights (7-bit for the uint8 file where the
# cell above says so: the comparison then also compares 7-bit with 8-bit weights) and the same
# calibration images. The teacher is measured again in ONNX Runtime, so each ratio is runtime
# against the same runtime, and each int8 model's accuracy is also taken on validation, where the
# choice is made.

# %%
# files under build/cache/, keyed by the model, the input shape, the images and the options
fp32_onnx = calibration.fp32_onnx(teacher, calib[:2], f"{NOTEBOOK}/teacher")
int8_onnx = {act: calibration.ort_calibrated(teacher, calib, "minmax", name=f"{NOTEBOOK}/teacher",
                                             per_channel=True, activations=act)
             for act in ("uint8", "int8")}
records.append(measure.measure_onnx(fp32_onnx, "teacher", teacher, tags=["baseline", "fp32", "onnx"],
                                    limit=EVAL_IMAGES, min_run_time=LATENCY_S))
for act, path in int8_onnx.items():
    records.append(measure.measure_onnx(path, f"ort-int8-{act}-act", teacher,
                                        tags=["int8", "static", "per-channel", "onnx"],
                                        limit=EVAL_IMAGES, min_run_time=LATENCY_S, val=VAL_IMAGES))
display(tables.table([r for r in records if r["runtime"] == "onnxruntime"]))
u8, s8 = find(records, "ort-int8-uint8-act"), find(records, "ort-int8-int8-act")
faster = min((u8, s8), key=lambda r: r["latency_b1_ms"])
slower = s8 if faster is u8 else u8
print(f"measured on this CPU (VNNI: {isa['vnni']}): {faster['name']} is "
      f"{slower['latency_b1_ms'] / faster['latency_b1_ms']:.1f}x faster at batch 1 and "
      f"{slower['latency_b64_ms'] / faster['latency_b64_ms']:.1f}x at batch 64; validation accuracy "
      f"uint8 {100 * u8['val_accuracy']:.2f} %, int8 {100 * s8['val_accuracy']:.2f} % "
      f"({len(val_y):,} images)")
ort_choice = {"isa": isa, "faster": faster["name"],
              "b1_ratio": slower["latency_b1_ms"] / faster["latency_b1_ms"],
              "val_accuracy": {"uint8": u8["val_accuracy"], "int8": s8["val_accuracy"]}}

# %% [markdown]
# That is a measurement on *this* CPU, not a rule: on a CPU without VNNI, full 8-bit U8S8 can
# lose accuracy to saturation (the docs' caveat above), which is why the uint8 file keeps 7-bit
# weights there, at the cost of one bit of weight precision; on the Pi's Arm cores the kernels
# are different again, so measure both activation types on the target (notebook 05 measures the
# bundle there).
#
# Every static model here reads its activation ranges with its library's default calibration
# (histogram observers in PyTorch, MinMax in ONNX Runtime). How much the choice of calibrator
# matters, measured on validation, is [02 · Quantization calibration](02_quantization_flows_calibration.ipynb).

# %% [markdown]
# ## 7 · Everything side by side
#
# Ratios are against the fp32 teacher **in the same runtime**, measured in this run.

# %%
display(tables.table(records, bars={"×smaller": targets.INT8_SMALLER,
                                    "×faster b64": targets.INT8_FASTER_B64}))
spread = max(r["accuracy"] for r in records) - min(r["accuracy"] for r in records)
shrink = find(records, "teacher", "torch")["bytes"] / find(records, "ptq-per-channel")["bytes"]
fig = plots.cost_figure(records, costs=("bytes", "latency_b64_ms"), title=f"int8 files are "
                         f"{shrink:.1f}x smaller; all {len(records)} flows lie within {100 * spread:.2f} points")
figures.show(fig)

# %% [markdown]
# **The bars.** The best static int8 model in each runtime should be at least 3.5× smaller and
# 1.5× faster at batch 64 than the fp32 teacher in that runtime, within 0.5 points of its accuracy:

# %%
bars = targets.int8_static_bars(records)
for engine, b in bars.items():
    print(f"{engine:>11}: {b['name']}: {b['smaller']:.2f}x smaller, {b['faster_b64']:.2f}x faster "
          f"at batch 64, {b['delta_pt']:+.2f} pt -> {'met' if b['met'] else 'NOT met'}")
if SMOKE:
    print("(smoke mode: small test subset and short timings; the bars are judged at the defaults)")

# %% [markdown]
# ### Which one should I use?
#
# - **A CNN on a CPU (this teacher, the Pi):** static int8 with per-channel weights and a few
#   hundred calibration images. Deploying with ONNX Runtime: QDQ, with the activation type that
#   measured faster on the target at the same validation accuracy (on this CPU, printed in part 6;
#   S8S8 is ONNX Runtime's documented default). Staying in PyTorch: PT2E with the quantizer for
#   your backend, then `torch.compile`.
# - **Transformers, LSTMs, models that are mostly Linear layers:** dynamic quantization, no
#   calibration needed, or torchao's `quantize_` with a Linear config.
# - **Accuracy lost after post-training quantization** (fewer than 8 bits, small or sensitive
#   models): first a clipped post-training range (part 5), then QAT, starting from the trained
#   weights.

# %% [markdown]
# ## Save this run's records

# %%
path = report.write_notebook_results(NOTEBOOK, records, smoke=SMOKE)
print(f"wrote {len(records)} records to {path.relative_to(path.parents[2])}; "
      f"notebook body ran in {time.time() - T_START:.0f} s")

# %% [markdown]
# **Next:** [02 · Quantization calibration](02_quantization_flows_calibration.ipynb) compares the ways
# of reading activation ranges from calibration images; then [03 · Distillation](03_distillation.ipynb)
# trains a much smaller student to imitate this teacher; quantizing that student stacks the savings.
