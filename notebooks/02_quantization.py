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
# # 02 · Quantization: the affine map, how few bits, and dynamic quantization
#
# A trained ResNet18 stores every weight as a 32-bit float. Quantization stores them, and computes
# with them, as 8-bit integers (or fewer bits): four times fewer bytes, and on CPUs with int8
# instructions, faster arithmetic. This notebook is the arithmetic; the next one,
# [02 · Quantization flows](02_quantization_flows.ipynb), runs the int8 flows and measures them.
#
# **You will learn**
# - the affine map behind every int8 model: scale, zero point, rounding and clamping; symmetric
#   vs asymmetric, per-tensor vs per-channel; and you will write quantize/dequantize yourself;
# - why batch norm is folded into the weights before they are quantized;
# - how few bits the teacher's (folded) weights survive, with a slider;
# - what dynamic quantization does to a CNN (the seed's call), and what it is for;
# - what "mixed precision" can and cannot mean for deployment.
#
# **Time:** about 2 minutes at the defaults on a 2-core laptop; under a minute in smoke mode.

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

from edgelab import (cache, check, data, deploy, evaluation, figures, measure, memory, models,
                     qmath, quantize, report, runtime, tables, widgets)
from edgelab.records import find
from edgelab.sizes import saved_size

memory.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

T_START = time.time()
EVAL_IMAGES = 200 if SMOKE else None      # None: the full 10k test set (every claim below)
LATENCY_S = 0.1 if SMOKE else 1.0         # seconds of timing per batch size
SLIDER_IMAGES = 32 if SMOKE else 200      # the slider's fixed subset of the validation set
STE_TRAIN = 256 if SMOKE else 4096          # frozen features the one-layer QAT demo trains on
STE_VAL = 256 if SMOKE else 2000
STE_STEPS = 20 if SMOKE else 300
INT_CALIBRATION = 32 if SMOKE else 128        # images ONNX Runtime calibrates the int8 teacher on
INT_IMAGES = 32 if SMOKE else 500
KMEANS_VAL = 64 if SMOKE else 1000            # validation images for k-means against linear
KMEANS_BITS = [2, 3] if SMOKE else [2, 3, 4]
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
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.6))
for (label, kw), marker in zip([("asymmetric, per-tensor", dict(symmetric=False)),
                                ("symmetric, per-tensor", dict(symmetric=True)),
                                ("symmetric, per-channel", dict(symmetric=True, axis=0))], figures.MARKERS):
    errs = [qmath.relative_error(w, qmath.quantize_dequantize(w, b, **kw)) for b in bit_range]
    ax.plot(bit_range, errs, marker=marker, label=label)
per_bit = (errs[bit_range.index(4)] / errs[-1]) ** (1 / (bit_range[-1] - 4))  # per-channel, 4 -> 8 bits
figures.log_axis(ax, "y")
ax.set_xlabel("bits per weight"); ax.set_ylabel("relative error ‖w − ŵ‖ / ‖w‖"); ax.legend()
ax.set_title(f"From 4 to 8 bits each bit divides the error by {per_bit:.2f} "
             f"(per-channel, {w.numel():,} weights)")
figures.show(fig)
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
# ### Your turn: rounding you can train through
#
# Quantization-aware training (02's flows notebook) puts this rounding into the forward pass and
# keeps training. But `torch.round` has a zero derivative almost everywhere, so no gradient would
# reach the weights. The **straight-through estimator** (Bengio et al., 2013,
# [arXiv:1308.3432](https://arxiv.org/abs/1308.3432)) rounds in the forward pass and, in the
# backward pass, treats rounding as the identity inside the grid's range and passes nothing where
# a value was clipped. Write `fake_quant_ste(x, scale, zero_point, qmin, qmax)`: the forward values
# of `(clamp(round(x / scale) + zero_point, qmin, qmax) − zero_point) × scale`, with that gradient.
# `x + (q − x).detach()` has the forward value `q` and the gradient of `x`; clamp `x` to the range
# first and the gradient vanishes where it was clipped. `check.fake_quant_ste` compares values and
# gradients with `torch.fake_quantize_per_tensor_affine`, which torch.ao's `FakeQuantize` modules
# (and so QAT) call.

# %%
def my_fake_quant_ste(x, scale, zero_point, qmin, qmax):
    # lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    # q = (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale
    # inside = x.clamp(lo, hi); return inside + (q - inside).detach()
    raise NotImplementedError

fake_quant_ste = check.fake_quant_ste(my_fake_quant_ste)

# %% [markdown]
# Your function on one layer: the teacher's classifier `fc` (512 → 10) at **2-bit** weights
# (symmetric, one scale for the tensor set by its largest weight: the codes −1, 0, 1, a ternary
# layer). The cell rounds the trained weights, then trains them *through* your `fake_quant_ste`
# for a few hundred steps on the teacher's frozen features of training images, and measures both
# on validation images. A clipped range is the post-training answer to the same problem (02's
# flows notebook compares it with QAT on the whole network).

# %%
body = torch.nn.Sequential(*list(teacher.children())[:-1], torch.nn.Flatten())
with torch.no_grad():
    feats_train = torch.cat([body(x) for x in data.tensors("train", limit=STE_TRAIN)[0].split(256)])
    feats_val = torch.cat([body(x) for x in data.tensors("val", limit=STE_VAL)[0].split(256)])
y_train, y_val = data.tensors("train", limit=STE_TRAIN)[1], data.tensors("val", limit=STE_VAL)[1]
fc = teacher.fc
w_scale = float(fc.weight.detach().abs().max())        # symmetric 2 bits: codes -1, 0, 1


def fc_accuracy(weight):
    return float(((feats_val @ weight.T + fc.bias.detach()).argmax(1) == y_val).float().mean())


w_qat = fc.weight.detach().clone().requires_grad_(True)
opt = torch.optim.Adam([w_qat], lr=1e-3)
for step in range(STE_STEPS):
    i = torch.randint(0, len(y_train), (128,), generator=torch.Generator().manual_seed(step))
    logits = feats_train[i] @ fake_quant_ste(w_qat, w_scale, 0, -1, 1).T + fc.bias.detach()
    loss = torch.nn.functional.cross_entropy(logits, y_train[i])
    opt.zero_grad(); loss.backward(); opt.step()
with torch.no_grad():
    accs = {"fp32": fc_accuracy(fc.weight.detach()),
            "2-bit, rounded after training": fc_accuracy(qmath.fake_quant_ste(fc.weight.detach(), w_scale, 0, -1, 1)),
            f"2-bit, {STE_STEPS} steps through the STE": fc_accuracy(qmath.fake_quant_ste(w_qat.detach(), w_scale, 0, -1, 1))}
for k, v in accs.items():
    print(f"fc {k:34s} {100 * v:.2f} % on {len(y_val):,} validation images")

# %% [markdown]
# ### Your turn: an int8 layer in integers only
#
# On an int8 CPU kernel (and on the Pi) no float is involved between the quantized input and the
# quantized output. With `x = s_x (x_q − z_x)`, symmetric weights `w = s_w w_q` and the bias stored
# as int32 at scale `s_x s_w`, the output code is
#
# `y_q = clamp(round(M · acc) + z_y, 0, 255)`, where `acc = (x_q − z_x) · w_qᵀ + bias_q` is an
# int32 sum and `M = s_x s_w / s_y` (one per output channel with per-channel weights).
#
# `M` is a real number below 1, so kernels store it as integers: `M ≈ m0 · 2^−(31+shift)` with
# `m0` in [2³⁰, 2³¹) (`qmath.fixed_point`, the form of gemmlowp and TFLite), and rescale with one
# integer multiply and a rounding right shift. Write `int_linear(x_q, x_zp, w_q, bias_q, m, y_zp)`
# returning uint8 codes; `check.int_linear` compares with the float formula, within one code, on
# fixed cases with non-zero zero points, one multiplier per output, and outputs that must clamp.

# %%
def my_int_linear(x_q, x_zp, w_q, bias_q, m, y_zp):
    # acc = (x_q.long() - x_zp) @ w_q.long().T + bias_q.long()
    # m0, shift = qmath.fixed_point(m); total = 31 + shift
    # y = (acc * m0 + (1 << (total - 1))) >> total                 # round(acc * M), in integers
    # return (y + y_zp).clamp(0, 255).to(torch.uint8)
    raise NotImplementedError

int_linear = check.int_linear(my_int_linear)

# %% [markdown]
# Your layer against ONNX Runtime's own: the teacher quantized by ONNX Runtime (static, per-channel
# int8 weights, uint8 activations; 02's flows notebook measures it whole). The cell reads the
# scales and zero points ONNX Runtime chose for `fc` from the graph's initializers
# (`runtime.qdq_linear`), asks the graph to also return `fc`'s quantized input and output
# (`runtime.with_outputs`), and feeds the same input codes to your function.

# %%
# files keyed by what made them: the checkpoint's hash, the input shape, the calibration
example = data.tensors("val", limit=2)[0]
teacher_onnx = deploy.export(teacher, cache.path(
    f"{NOTEBOOK}/teacher", [models.read_card("teacher")["sha256"], example.shape[1:]], ".onnx"),
    example)
teacher_int8 = runtime.ort_static(teacher_onnx, cache.path(
    f"{NOTEBOOK}/teacher-int8", [teacher_onnx.name, "minmax", INT_CALIBRATION, "per-channel"],
    ".onnx"), data.calibration_set(INT_CALIBRATION))
fc_q = runtime.qdq_linear(teacher_int8, "fc.weight")
probe_names = [fc_q["x_name"], fc_q["y_name"]]
probe = runtime.session(runtime.with_outputs(teacher_int8, probe_names, cache.path(
    f"{NOTEBOOK}/teacher-int8-probe", [teacher_int8.name, probe_names], ".onnx")), threads=1)
_, x_codes, ort_codes = probe.run(None, {"image": data.tensors("val", limit=INT_IMAGES)[0].numpy()})
m = fc_q["x_scale"] * torch.from_numpy(fc_q["w_scale"].copy()).double() / fc_q["y_scale"]
mine = int_linear(torch.from_numpy(x_codes.copy()), fc_q["x_zp"],
                  torch.from_numpy(fc_q["w_q"].copy()), torch.from_numpy(fc_q["bias_q"].copy()),
                  m, fc_q["y_zp"])
off = (mine.int() - torch.from_numpy(ort_codes.copy()).int()).abs()
m0, shift = qmath.fixed_point(m)
print(f"fc in ONNX Runtime: input scale {fc_q['x_scale']:.5f} (zero point {fc_q['x_zp']}), "
      f"output scale {fc_q['y_scale']:.5f} (zero point {fc_q['y_zp']}), "
      f"M from {float(m.min()):.2e} to {float(m.max()):.2e}")
print(f"first output's M as integers: m0 = {int(m0[0])}, shift = {int(shift[0])}")
print(f"{INT_IMAGES} validation images × 10 outputs: {100 * float((off == 0).float().mean()):.2f} % "
      f"of your codes equal ONNX Runtime's, largest difference {int(off.max())} code(s)")
del probe

# %% [markdown]
# ### Your turn: shared weights by k-means (Deep Compression)
#
# Linear quantization spaces its levels evenly. **Weight sharing** (Han, Mao and Dally, *Deep
# Compression*, 2016, [arXiv:1510.00149](https://arxiv.org/abs/1510.00149)) instead fits `2^bits`
# shared values to where a tensor's weights actually are, with k-means, and stores a `bits`-wide
# index per weight plus the small table of values (the codebook). Write
# `kmeans_quantize(w, bits) -> (centroids, indices, reconstruction)`: start from `2^bits`
# centroids spread linearly over [min, max] (the start the paper found best), then repeat
# Lloyd's two steps: give each weight to its nearest centroid, move each centroid to the mean of
# its weights (an empty one stays put). `check.kmeans_quantize` checks the codebook's size, that
# every weight sits at its nearest centroid, that every centroid is its weights' mean, and the
# linear start.

# %%
def my_kmeans_quantize(w, bits):
    # flat = w.flatten(); c = torch.linspace(flat.min(), flat.max(), 2 ** bits)
    # repeat ~30 times: idx = (flat[:, None] - c[None]).abs().argmin(1)
    #                   c[j] = flat[idx == j].mean() for every j that has weights
    # return c, idx.view(w.shape), c[idx].view(w.shape)
    raise NotImplementedError

kmeans_quantize = check.kmeans_quantize(my_kmeans_quantize)

# %% [markdown]
# Your function on every convolution and linear weight of the teacher, one codebook per tensor,
# against linear (symmetric) quantization with one scale per tensor, at the same bits: accuracy on
# validation images, and bytes as stored (packed indices plus each codebook, or packed codes plus
# each scale; biases and batch norms stay fp32 in both).

# %%
kx, ky = data.tensors("val", limit=KMEANS_VAL)
raw = {k: w.detach() for k, w in qmath.quantizable_weights(teacher).items()}
other_bytes = sum(t.numel() * 4 for k, t in teacher.state_dict().items()
                  if k not in raw and t.is_floating_point())
rows = []
for bits in KMEANS_BITS:
    shared = {k: kmeans_quantize(w, bits)[2] for k, w in raw.items()}
    linear = {k: qmath.quantize_dequantize(w, bits, symmetric=True) for k, w in raw.items()}
    rows.append({"bits": bits,
                 "kmeans": evaluation.accuracy_on(qmath.with_weights(teacher, shared), kx, ky),
                 "linear": evaluation.accuracy_on(qmath.with_weights(teacher, linear), kx, ky),
                 "kmeans_mb": (sum(qmath.codebook_bytes(w, bits) for w in raw.values()) + other_bytes) / 1e6,
                 "linear_mb": qmath.weight_bytes(teacher, bits, per_channel=False) / 1e6})
    print(f"{bits} bits: k-means {100 * rows[-1]['kmeans']:6.2f} % ({rows[-1]['kmeans_mb']:.2f} MB), "
          f"linear {100 * rows[-1]['linear']:6.2f} % ({rows[-1]['linear_mb']:.2f} MB) on {len(ky):,} "
          "validation images")
    del shared, linear
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.2))
for key, marker, label in (("kmeans", "o", "k-means codebook"), ("linear", "s", "linear, per tensor")):
    ax.plot([r["bits"] for r in rows], [100 * r[key] for r in rows], marker=marker, label=label)
ax.axhline(100 * evaluation.accuracy_on(teacher, kx, ky), color="0.5", ls="--", lw=1, label="fp32")
ax.set_xticks(KMEANS_BITS)
ax.set_xlabel("bits per weight"); ax.set_ylabel(f"accuracy (%), {len(ky):,} val images")
ax.legend(loc="lower right"); ax.set_title("The same bits, levels placed by k-means or evenly")
figures.show(fig)

# %% [markdown]
# Shared values cost a codebook per tensor, a few bytes, and buy levels where the weights are. But
# no int8 kernel multiplies by a codebook index: a runtime must look each value up first (or
# dequantize the layer to fp32 and run it dense), so k-means saves storage and download bytes, not
# arithmetic. Linear codes are what CPU and Pi int8 kernels compute with.

# %% [markdown]
# ## 2 · How few bits do the weights need? A slider
#
# First, which weights? In eval mode a batch norm after a convolution is an affine map per
# channel, `γ (y − μ) / σ + β`, so every int8 runtime **folds** it into the convolution before
# quantizing: the weights of output channel `c` are multiplied by `γ_c / σ_c` and the bias absorbs
# the rest. The folded weights are what gets quantized, and their per-channel ranges are not the
# raw ones.
#
# ### Your turn: fold one batch norm
#
# Write `fold_bn(conv, bn)`: a **new** `nn.Conv2d` (with a bias) that computes `bn(conv(x))` in
# eval mode. Output channel `c`'s weights are multiplied by `s_c = γ_c / sqrt(var_c + eps)`; the
# bias becomes `β_c + (b_c − μ_c) · s_c`, where `b_c` is the conv's own bias (0 if it has none).
# `check.fold_bn` compares your conv with the pair on a fixed input, with and without a conv bias.

# %%
def my_fold_bn(conv, bn):
    # s = bn.weight / torch.sqrt(bn.running_var + bn.eps)        one factor per output channel
    # new = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
    #                       conv.padding, bias=True)
    # with torch.no_grad(): new.weight.copy_(conv.weight * s.view(-1, 1, 1, 1)); new.bias.copy_(...)
    raise NotImplementedError

fold_bn = check.fold_bn(my_fold_bn)

# %% [markdown]
# Your fold on one of the teacher's layers, against the batch norm it replaces, and what it does to
# that layer's per-channel weight ranges: the box plot shows, for each of the layer's output
# channels, its largest |w| before and after folding. A wider spread is what per-channel scales
# are for: one scale for the whole tensor would be set by the widest channel.

# %%
conv, bn = teacher.get_submodule("layer3.0.conv1"), teacher.get_submodule("layer3.0.bn1")
x_layer = torch.randn(4, conv.in_channels, 7, 7, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    mine = fold_bn(conv, bn)(x_layer)
    pair = bn(conv(x_layer))
print(f"layer3.0: folded conv vs conv → batch norm, largest difference "
      f"{float((mine - pair).abs().max()):.1e} (outputs up to {float(pair.abs().max()):.1f})")
ranges = {"raw": conv.weight.detach().abs().flatten(1).amax(1),
          "folded": fold_bn(conv, bn).weight.detach().abs().flatten(1).amax(1)}
fig, ax = plt.subplots(figsize=(figures.WIDTH, 2.8))
ax.boxplot(list(ranges.values()), orientation="horizontal", widths=0.5)
ax.set_yticks([1, 2], [f"{k} ({len(v)} channels)" for k, v in ranges.items()])
ax.set_xlabel("largest |weight| of each output channel")
ax.set_title("layer3.0.conv1: per-channel ranges before and after folding its batch norm")
figures.show(fig)

# %% [markdown]
# The whole teacher is folded the same way by
# `torch.fx.experimental.optimization.fuse` ([source](https://github.com/pytorch/pytorch/blob/main/torch/fx/experimental/optimization.py)),
# the same function to float precision:

# %%
folded = qmath.fold_batchnorm(teacher)
xs, ys = data.tensors("val", limit=SLIDER_IMAGES)
with torch.no_grad():
    fold_diff = float((folded(xs[:64]) - teacher(xs[:64])).abs().max())
raw_w = teacher.get_submodule("layer3.0.conv1").weight.detach()
fold_w = folded.get_submodule("layer3.0.conv1").weight.detach()


def channel_spread(w):   # largest per-channel range over the smallest
    amax = w.abs().flatten(1).amax(1)
    return float(amax.max() / amax.min())


print(f"folded vs original logits: largest difference {fold_diff:.1e}; "
      f"batch-norm modules left: {sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())}")
print(f"layer3.0.conv1: largest/smallest per-channel |w| max: raw {channel_spread(raw_w):.1f}x, "
      f"folded {channel_spread(fold_w):.1f}x")

# %% [markdown]
# The slider fake-quantizes every convolution and linear weight of the **folded** teacher
# (symmetric, to the chosen bits; activations stay fp32) and measures accuracy on a fixed subset
# of the validation set (choices such as "how few bits" are made there, never on the test set),
# so that it answers in under a second. The size is what the weights would take
# packed at that width, with their fp32 scales.

# %%
panel = widgets.bits_panel(folded, xs, ys, bits=8, per_channel=True)
panel

# %% [markdown]
# Nobody moves a slider under papermill, so the notebook moves it itself: down from 8 bits, per
# channel and then per tensor, timing each response.

# %%
per_channel_curve = {8: panel.result["accuracy"]}
per_channel_curve.update({h["bits"]: h["accuracy"] for h in panel.sweep("bits", range(7, 1, -1))})
panel.set(granularity="per-tensor")
per_tensor_curve = {2: panel.result["accuracy"]}
per_tensor_curve.update({h["bits"]: h["accuracy"] for h in panel.sweep("bits", range(3, 9))})
times = sorted(panel.response_times)
bits_sweep = {"median_s": times[len(times) // 2], "max_s": times[-1], "moves": len(times)}
sweep_bits = list(range(8, 1, -1))
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.6))
figures.accuracy_errorbar(ax, sweep_bits, [per_channel_curve[b] for b in sweep_bits], len(xs),
                          ls="-", label="per-channel scales")
figures.accuracy_errorbar(ax, sweep_bits, [per_tensor_curve[b] for b in sweep_bits], len(xs),
                          ls="-", marker="s", label="per-tensor scale")
ax.set_xlabel("weight bits"); ax.set_ylabel(f"accuracy (%)\n{len(xs):,} val. images, ±1 SE")
ax.invert_xaxis(); ax.legend(loc="lower left")
lowest_ok = min(b for b in sweep_bits if per_channel_curve[b] >= per_channel_curve[8] - 0.01)
ax.set_title(f"Per-channel weights keep accuracy within 1 point down to {lowest_ok} bits")
figures.show(fig)
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

# %%
print(f"at 2 bits: per-channel {100 * per_channel_curve[2]:.1f} %, per-tensor "
      f"{100 * per_tensor_curve[2]:.1f} % on {len(xs)} validation images (chance: 10 %)")

# %% [markdown]
# The 2-bit line above says how far the folded weights fall when pushed too far. Where per-tensor
# scales give out before per-channel ones, the channels with small folded weights are the first
# casualties: one scale for the whole tensor leaves them only a few codes. The next notebook uses
# 8 bits for weights *and* activations, the width CPU int8 kernels compute in.
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
# Calibration belongs to *static* quantization (the next notebook): its activation scales are
# fixed before any image arrives, so an image should get the same output in any batch. A quick
# static int8 model, calibrated on a few images, measured the same way:

# %%
try:
    quantize.quantized_engine()
    ENGINE = True
except quantize.NoQuantizedEngine as e:
    ENGINE = False
    print(e)
if ENGINE:
    quick = quantize.eager_static(teacher, data.calibration_set(32), per_channel=True)
    with torch.no_grad():
        static_row_diff = float((quick(row_x[:1])[0] - quick(row_x)[0]).abs().max())
    print(f"static int8: the same image's logits differ by {static_row_diff:.2e} between batch 1 "
          f"and batch 64 (dynamic: {dynamic_row_diff:.2e})")
    del quick
else:
    static_row_diff = None

# %% [markdown]
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
fp32_val = evaluation.accuracy_on(teacher, mx, my)
half_rows = {}
for dtype in (torch.float16, torch.bfloat16):
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in teacher.state_dict().items()}
    stored = saved_size(sd)
    back = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    acc = evaluation.accuracy_on(qmath.with_weights(teacher, back), mx, my)
    half_rows[str(dtype).split(".")[1]] = {"bytes_vs_fp32": stored / t["bytes"], "val_accuracy": acc}
    print(f"{str(dtype):15s} weights: file {stored / 1e6:.1f} MB ({stored / t['bytes']:.0%} of fp32), "
          f"accuracy {100 * acc:.2f} % (fp32 {100 * fp32_val:.2f} %)")
del sd, back

# sensitivity: each layer alone at 2 bits (per-channel), the others fp32
originals = {k: w.detach() for k, w in qmath.quantizable_weights(teacher).items()}
sizes = {k: w.numel() for k, w in originals.items()}
base_sens = evaluation.accuracy_on(teacher, mx[:SENS_IMAGES], my[:SENS_IMAGES])
drop2 = {}
for k, w in originals.items():
    fake = {k: qmath.quantize_dequantize(w, 2, axis=0, symmetric=True)}
    drop2[k] = base_sens - evaluation.accuracy_on(qmath.with_weights(teacher, fake),
                                               mx[:SENS_IMAGES], my[:SENS_IMAGES])
mixed = qmath.mixed_bits(drop2, sizes, budget_bits=4 * sum(sizes.values()))


def at_bits(widths):   # the teacher with each Conv/Linear weight fake-quantized at its width
    return qmath.with_weights(teacher, {k: qmath.quantize_dequantize(
        originals[k], widths[k], axis=0, symmetric=True) for k in originals})


uniform4 = dict.fromkeys(originals, 4)
mixed_rows = {}
for label, widths in [("uniform 4-bit", uniform4), ("mixed, same bytes", mixed)]:
    mixed_rows[label] = {"weight_bytes": qmath.weight_bytes(teacher, widths, per_channel=True),
                         "val_accuracy": evaluation.accuracy_on(at_bits(widths), mx, my)}
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
# ## The two models of this notebook
#
# Dynamic quantization left the convolutions in fp32, so the file barely shrank; the int8 models
# that are smaller and faster are in the next notebook.

# %%
display(tables.table(records))

# %% [markdown]
# ## Save this run's records

# %%
seed_claims = {
    "2": report.seed_claim(
        "torch.ao.quantization.quantize_dynamic(teacher, {nn.Linear, nn.Conv2d}, dtype=torch.qint8)",
        {"conv2d_before": n_conv, "conv2d_after": n_conv_after, "warnings": len(messages),
         "warnings_mentioning_conv": len(mentions_conv),
         "bytes_vs_fp32": find(records, "dynamic")["bytes"] / t["bytes"]}),
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
# **Next:** [02 · Quantization flows](02_quantization_flows.ipynb) quantizes whole convolutions to
# int8 (static post-training, PT2E, QAT, ONNX Runtime) and measures what each one buys.
