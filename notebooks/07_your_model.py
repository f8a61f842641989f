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
# # 07 · Your own model: the whole chain on a network this workbook never saw
#
# Notebooks 00-06 tuned nothing by hand for their models, but they only ever met two: a ResNet18
# and a small ResNet. This notebook runs the same verbs on a model you name: measure it, prune
# its channels and fine-tune, quantize it to int8 in PyTorch (PT2E) and in ONNX Runtime, export it,
# bundle it for a Raspberry Pi, check the bundle on the two emulated Pi cores, and draw the report.
# Nothing in `edgelab` reads a layer's name or assumes a ResNet: every verb takes a plain
# `nn.Module` and an example input, and reads shapes from it.
#
# **Three ways to name the model** (the parameters cell below):
# - `ARCH`: any torchvision classifier by name (`zoo.torchvision_names()` lists them), adapted to
#   this data: its first convolution takes one channel and keeps the 28×28 resolution, its head
#   has ten classes. It starts **untrained** (this workbook never downloads) and is trained here
#   for a short budget. The default, MobileNetV3-Small, has depthwise convolutions,
#   squeeze-and-excitation blocks and hard-swish activations, none of which 00-06 used.
# - `OWN_MODEL_FILE` and `OWN_WEIGHTS`: a Python file of yours with a function `build_model()`
#   that returns your `nn.Module`, and its trained weights as a `.safetensors` file. **The Python
#   file is code and runs with your permissions**: use your own file, or one you trust. Only the
#   weights are loaded as plain tensors (safetensors cannot run code). Without weights, the model
#   is trained here like the torchvision one.
#
# **You will learn**
# - that the chain of 01-06 is a handful of verbs you can point at your own network;
# - where a general recipe costs accuracy on a model it was not tuned for, measured;
# - what changes for your own data (the last section).

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "07_your_model"
ARCH = "mobilenet_v3_small"      # a torchvision classifier's name
OWN_MODEL_FILE = None            # or "path/to/my_model.py", defining build_model()
OWN_WEIGHTS = None               # and "path/to/weights.safetensors" (optional)

# %%
import time

import torch
from IPython.display import display

from edgelab import (counts, data, deploy, evaluation, figures, measure, memory, models, paths, pi,
                     plots, prune, report, runtime, tables, train, zoo)
from edgelab.records import find
from edgelab.qconfig import QuantConfig, quantize
from edgelab.quantize import module_types

memory.setup_notebook()
T_START = time.time()

TRAIN_IMAGES = 512 if SMOKE else 27500   # the short live training: half the training set, once
FINETUNE_STEPS = 10 if SMOKE else 150    # after pruning, batches of 64
PRUNE_RATE = 0.3                         # channels removed from every layer but the classifier
EVAL_IMAGES = 500 if SMOKE else None     # the full 10k test set at defaults
VAL_IMAGES = 500 if SMOKE else 2000
CALIBRATION = 128 if SMOKE else 512
LATENCY_S = 0.2 if SMOKE else 1.0
THREADS = 1                              # the Pi's runtime budget, as in 05 and 06
ARM64_IMAGES = 20 if SMOKE else 100
WORK = paths.cache_dir(NOTEBOOK)
example = data.tensors("val", limit=2)[0]     # the input shape every verb reads
calibration = data.calibration_set(CALIBRATION)

# %% [markdown]
# ## 1 · The model

# %%
# NBVAL_CHECK_OUTPUT
if OWN_MODEL_FILE:
    model, name = zoo.load_own_model(OWN_MODEL_FILE, OWN_WEIGHTS), os.path.basename(OWN_MODEL_FILE)
else:
    model, name = zoo.torchvision_model(ARCH), ARCH
with torch.no_grad():
    out = model.eval()(example)
if out.shape != (len(example), len(data.CLASSES)):
    raise ValueError(f"{name} maps {tuple(example.shape)} images to {tuple(out.shape)}; it must "
                     f"give {len(data.CLASSES)} logits per image for Fashion-MNIST")
print(f"{name}: {counts.count_params(model):,} parameters, {counts.count_macs(model):,} MACs "
      "per 1×28×28 image")
kinds = module_types(model, kinds=("Conv", "Linear", "BatchNorm", "Hardswish", "SqueezeExcitation",
                                   "ReLU"))
print("layers:", ", ".join(f"{k.rsplit('.', 1)[-1]} ×{n}" for k, n in kinds.items()))

# %% [markdown]
# ## 2 · A short training (skipped when you bring weights)
#
# One pass over half the training set with SGD and a one-cycle schedule: `train.fit`, the same
# loop that trained every shipped checkpoint. A short budget is the point: the chain's costs are
# measured against whatever this baseline reaches, and the baseline says where it stands.
#
# One trap of borrowed architectures shows up here: torchvision's MobileNetV3 updates its batch
# norms' running statistics with momentum 0.01
# ([source](https://github.com/pytorch/vision/blob/main/torchvision/models/mobilenetv3.py)), tuned
# for long ImageNet runs. After a few hundred steps they still hold mostly their initial values,
# and evaluation (which uses them) suffers. `train.recalibrate_batchnorm` recomputes them as a
# plain average over 50 training batches, weights untouched; the cell prints both accuracies.

# %%
if OWN_WEIGHTS is None:
    t0 = time.time()
    batches = data.loader("train", 64, flip=True, limit=TRAIN_IMAGES, seed=0)
    losses = train.fit(model, batches, epochs=1, lr=0.05, device=torch.device("cpu"))
    stale = evaluation.accuracy_on(model.eval(), *data.tensors("val", limit=VAL_IMAGES))
    train.recalibrate_batchnorm(model, batches)
    print(f"trained on {len(batches.images):,} images in {time.time() - t0:.0f} s, "
          f"mean loss {losses[-1]:.3f}; validation accuracy {100 * stale:.1f} % with the batch "
          f"norms' running statistics as training left them, "
          f"{100 * evaluation.accuracy_on(model, *data.tensors('val', limit=VAL_IMAGES)):.1f} % "
          "after recomputing them")
else:
    print(f"weights from {OWN_WEIGHTS}: no training")

# %% [markdown]
# ## 3 · Prune, fine-tune, quantize, export: each stage measured
#
# - **pruned**: `prune.structured` removes `PRUNE_RATE` of every layer's output channels (not the
#   classifier's), ranked by the L2 norm of their weights, through torch-pruning's dependency
#   graph, which keeps residual sums, depthwise groups and squeeze-and-excitation scales
#   consistent; then `train.finetune_steps`.
# - **pruned-pt2e**: int8 in PyTorch with `quantize(pruned, QuantConfig("pt2e"), images)`
#   (torchao's PT2E flow, x86 quantizer). Its speed needs `torch.compile`, as 02's flows show;
#   here it stands for the accuracy of the PyTorch path and is not timed.
# - **pruned-int8 (onnxruntime)**: `quantize(pruned, QuantConfig("onnxruntime"), images,
#   out=path)` exports the `.onnx` and quantizes it statically in ONNX Runtime (per-channel int8
#   weights, uint8 activations): the file the bundle ships.
#
# Both are the one verb of `edgelab.qconfig`, the top of a layering: the integer arithmetic
# (`qmath`) → a granularity (one scale per tensor or per output channel) → a `QuantConfig` (flow,
# granularity, bits) → `quantize`, which runs the flow it names.

# %%
records = []


def add(m, label, tags, onnx_from=None, **kw):
    """One record; ``onnx_from``: ``m`` is an ``.onnx`` file exported from that torch module."""
    kw.update(tags=tags, limit=EVAL_IMAGES, val=VAL_IMAGES, min_run_time=LATENCY_S, threads=THREADS)
    records.append(measure.measure(m, label, **kw) if onnx_from is None
                   else measure.measure_onnx(m, label, onnx_from, **kw))
    memory.release_memory()


add(model, name, ["baseline", "fp32"], batch_sizes=(1,))
pruned = prune.structured(model, PRUNE_RATE, example)
train.finetune_steps(pruned, FINETUNE_STEPS, lr=0.01)
train.recalibrate_batchnorm(pruned, data.loader("train", 64, flip=True, limit=TRAIN_IMAGES, seed=1))
add(pruned, f"{name}-pruned", ["pruned", "fp32"], batch_sizes=(1,))
graph = quantize(pruned, QuantConfig("pt2e"), calibration, example=example)
add(graph, f"{name}-pruned-pt2e", ["pruned", "int8", "pt2e"], batch_sizes=(),
    artifact=runtime.graph_bytes(graph), params=counts.count_params(pruned),
    macs=counts.count_macs(pruned))
del graph
onnx_fp32 = deploy.export(model, WORK / f"{name}.onnx", example)
onnx_pruned = deploy.export(pruned, WORK / f"{name}-pruned.onnx", example)
for m, path in ((model, onnx_fp32), (pruned, onnx_pruned)):
    check = deploy.check_export(m, path, data.tensors("test", limit=64)[0])
    print(f"{path.name}: export matches PyTorch, largest logit difference {check['max_abs_diff']:.1e}")
onnx_int8 = quantize(pruned, QuantConfig("onnxruntime"), calibration, example=example,
                     out=WORK / f"{name}-pruned-int8.onnx")
for path, label, source, tags in ((onnx_fp32, name, model, ["baseline", "fp32"]),
                                  (onnx_int8, f"{name}-pruned-int8", pruned, ["pruned", "int8"])):
    add(path, label, tags + ["onnx"], onnx_from=source, batch_sizes=(1,))
display(tables.table(records, baseline=name))

# %% [markdown]
# ## 4 · The report card and the Pareto plot
#
# Ratios are against the fp32 baseline in the same runtime; accuracy on the same test images,
# with the paired standard error (03 explains it).

# %%
for r in records:
    base = find(records, name, r["runtime"])
    delta, se = tables.paired_delta(r, base)
    smaller = base["bytes"] / r["bytes"]
    faster = (f"{base['latency_b1_ms'] / r['latency_b1_ms']:5.2f}x faster at batch 1"
              if r.get("latency_b1_ms") else "not timed (needs torch.compile)")
    print(f"{r['name']:34s} {r['runtime']:12s} {100 * r['accuracy']:6.2f} % ({delta:+.2f} "
          f"±{se or 0:.2f} pt)  {smaller:5.2f}x smaller  {faster}")
teacher = models.read_card("teacher")
print(f"for scale: the workbook's teacher (00) scores {100 * teacher['test_accuracy']:.2f} % on the "
      f"same test set after {teacher['epochs']} full epochs (its card)")
fig = plots.cost_figure(records, pareto=True, title=f"{name}: accuracy against bytes and "
                         f"batch-1 latency ({THREADS} thread)")
figures.show(fig)

# %% [markdown]
# ## 5 · The Pi bundle, checked on both emulated Pi cores
#
# The same `pi.bundle.build` as 05 and 06 (its input read from `example`), written under
# `build/cache/07_your_model/` so that 06's bundle in `build/pi_bundle/` stays the workbook's.
# Emulated time is never a Pi's time.

# %%
bundle = pi.bundle.build(onnx_int8, WORK / "pi_bundle", example, name=f"{name}-pruned-int8",
                         accuracy=records[-1]["accuracy"],
                         test_images=records[-1]["test_images"], macs=records[-1]["macs"],
                         notes="Built by notebooks/07_your_model.ipynb.")
available, how = pi.emulate.available()
arm_by_cpu = {}
if available:
    arm_by_cpu = pi.emulate.verify_pis(bundle, images=ARM64_IMAGES)
    for res in arm_by_cpu.values():
        print(pi.emulate.summary(res))
else:
    print("The arm64 check cannot run here:", how)
records[-1]["bundle"] = {"files": sorted(pi.bundle.check(bundle)), "arm64_by_cpu": arm_by_cpu}
elapsed = time.time() - T_START
print(f"notebook body: {elapsed:.0f} s")
if SMOKE:
    print("(smoke mode: small sizes, these figures are not the claims)")
path = report.write_notebook_results(NOTEBOOK, records, smoke=SMOKE)

# %% [markdown]
# **What it means.** The verbs ran unchanged on a network with depthwise convolutions,
# squeeze-and-excitation and hard-swish; the table says what each stage cost *this* model. After a
# short live training the baseline sits where the report card puts it against the teacher of 00:
# read the ratios and the deltas rather than the absolute accuracy, and train longer (or bring
# weights) for a model you would ship.
#
# ## Your own data
#
# - **Normalisation**: `data.normalize` subtracts Fashion-MNIST's training mean and divides by its
#   standard deviation; the bundle's `predict.py` repeats exactly that, with the constants its
#   `labels.json` carries (05 shows what a mismatch costs). Use your training set's constants in
#   both places: `pi.bundle.build(..., mean=[...], std=[...])`, one per channel.
# - **Input size and channels**: every verb reads shapes from the `example` you pass
#   (`counts.count_macs(model, example)`, `prune.structured(model, rate, example)`,
#   `quantize(model, QuantConfig("pt2e"), images, example=example)`,
#   `deploy.export(model, path, example)`,
#   `pi.bundle.build(model, out_dir, example)`), and `measure.measure(model, name, images=...,
#   labels=...)` evaluates on your test tensors. The bundle's `labels.json` records the input it
#   read from the model (grayscale or RGB, height, width), and its `predict.py` makes exactly that
#   from any image file.
# - **Classes**: the bundle's `labels.json` comes from `pi.bundle.build(..., labels=[...])`.
# - The public API, with every verb's signature and docstring: [`docs/api.md`](../docs/api.md).
