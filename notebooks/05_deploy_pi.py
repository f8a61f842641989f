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
# # 05 · Deploying to a Raspberry Pi: ONNX, ONNX Runtime, and a bundle checked on an emulated Pi CPU
#
# A model is deployed when it runs somewhere else, without PyTorch and without this repository.
# This notebook exports the teacher and the 50 %-pruned model to ONNX, runs them in ONNX Runtime
# in fp32 and in static int8, picks the one to ship, writes a self-contained bundle for a
# Raspberry Pi, and runs that bundle's own script on an emulated Pi 4 CPU (an Arm Cortex-A72
# under qemu) to check that it predicts there exactly what it predicts here.
#
# **You will learn**
# - how to export with `torch.onnx.export` (its `torch.export`-based exporter) into one `.onnx` file with a dynamic
#   batch size, how to check the file against PyTorch on real images, and what a model that
#   cannot be exported looks like;
# - what intra-op threads and batch size do to latency in ONNX Runtime, and where more threads
#   stop helping;
# - fp32 against static int8 (QDQ, per-channel weights, the activation type measured faster
#   here) in ONNX Runtime, with accuracy measured on the full test set from the ONNX files themselves;
# - what goes into a Pi bundle (model, labels, a script that needs only onnxruntime, numpy and
#   Pillow, pinned requirements, the steps on Raspberry Pi OS);
# - *your turn:* the preprocessing the device must repeat exactly, and what each typical mistake
#   costs the shipped model (measured; none of them raises an error);
# - how to check an arm64 deployment on an x86 machine, and why emulated time says nothing
#   about a Pi's speed (published Pi figures, with their sources, close the notebook).
#
# **Time:** about 2 minutes at the defaults on a 2-core laptop (exports, accuracy on the full 10k
# test set, the latency grid, 300 images on the emulated CPU), more on a busy machine; under a
# minute in smoke mode. The
# emulated CPU is set up once by `make pi-rootfs` (minutes; not counted here).

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "05_deploy_pi"

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from edgelab import (cache, check, counts, data, deploy, evaluation, figures, latency, measure,
                     memory, models, paths, pi, report, runtime, tables)
from edgelab.records import find

memory.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

T_START = time.time()
EVAL_IMAGES = 200 if SMOKE else None      # None: the full 10k test set (every claim below)
VAL_IMAGES = 500 if SMOKE else 5000       # validation images: the choice is made on these
CHECK_IMAGES = 32 if SMOKE else 256       # real test images for the export check
CALIB_IMAGES = 64 if SMOKE else 256       # calibration images for static int8
LATENCY_S = 0.02 if SMOKE else 0.5        # seconds of timing per latency figure
GRID_S = 0.02 if SMOKE else 0.3           # seconds of timing per cell of the threads x batch grid
THREADS = [1, 2, 3, 4]                    # ONNX Runtime intra-op threads (a Pi 4 or 5 has 4 cores)
BATCHES = [1, 8] if SMOKE else [1, 64]    # batch sizes of the latency grid
ARM64_IMAGES = 20 if SMOKE else 300       # test images classified on the emulated Pi CPU
PREP_IMAGES = 500 if SMOKE else 10000     # test images for the preprocessing comparison
MAX_DROP_PT = 3.0 if SMOKE else 1.0       # accuracy the shipped model may lose against the teacher
                                          # (smoke: on 200 images one image is 0.5 pt)
WORK = paths.cache_dir(NOTEBOOK)
WORK.mkdir(parents=True, exist_ok=True)
print(f"smoke mode: {SMOKE}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
      f"{os.cpu_count()} CPU cores on this machine")

# %% [markdown]
# ## 1 · Export to ONNX
#
# ONNX is a file format for a computation graph and its weights; ONNX Runtime runs it on x86, Arm
# and more, from Python, C, C++, Java or C#, without PyTorch. `torch.onnx.export` captures the
# forward pass with `torch.export` (the whole graph, as PyTorch operators), then translates each
# operator to ONNX: `dynamo=True` selects this exporter, and it is the default since PyTorch 2.9
# ([torch.onnx docs](https://docs.pytorch.org/docs/stable/onnx.html); the next cell prints the
# installed default), so the older TorchScript exporter is now the opt-in (`dynamo=False`). `edgelab.deploy.export` asks for one
# self-contained file (weights inside, no side `.data` file) and a batch dimension left free
# (`dynamic_shapes`), so the same file serves one image or a hundred.

# %%
torch_models = {"teacher": models.load_checkpoint("teacher"),
                "pruned50": models.load_checkpoint("pruned50")}
import inspect
print(f"torch {torch.__version__}: torch.onnx.export(dynamo=...) defaults to "
      f"{inspect.signature(torch.onnx.export).parameters['dynamo'].default}")
example = data.tensors("val", limit=2)[0]   # two images: the input shape the exporter traces
fp32_onnx = {}
for name, m in torch_models.items():
    # files under build/cache/, keyed by what made them: the checkpoint's hash, the input shape
    where = cache.path(f"{NOTEBOOK}/{name}", [models.read_card(name)["sha256"], example.shape[1:]],
                       ".onnx")
    with runtime.Stopwatch() as sw:
        fp32_onnx[name] = deploy.export(m, where, example)
    print(f"{name}: exported in {sw.s:.1f} s, {fp32_onnx[name].stat().st_size / 1e6:.1f} MB "
          f"({counts.count_params(m) / 1e6:.2f} M parameters at 4 bytes, plus the graph)")

# %%
# NBVAL_CHECK_OUTPUT
import onnx

for name, path in fp32_onnx.items():
    g = onnx.load(str(path)).graph
    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer)
    ops = sorted({n.op_type for n in g.node})
    print(f"{name}: input {g.input[0].name} {dims(g.input[0])}, output {g.output[0].name} "
          f"{dims(g.output[0])}; weights inside the file: {not external}; "
          f"{sum(n.op_type == 'Conv' for n in g.node)} Conv nodes; ops: {', '.join(ops)}")

# %% [markdown]
# The batch dimension is a name (`batch`), not a number: the file takes any batch size. Batch
# norm has been folded into the convolutions' weights on the way. An export can still be wrong
# in ways no error reports (an operator translated differently, a constant baked in), so compare
# the file with PyTorch on real test images: the logits should agree to float rounding, and every
# top-1 prediction should be the same.

# %%
x_check = data.tensors("test", limit=CHECK_IMAGES)[0]
export_checks = {}
for name, m in torch_models.items():
    export_checks[name] = deploy.check_export(m, fp32_onnx[name], x_check)
    c = export_checks[name]
    print(f"{name}: largest logit difference ONNX Runtime vs PyTorch {c['max_abs_diff']:.1e} on "
          f"{c['images']} test images; same top-1 on {100 * c['same_top1']:.0f} %")


# %% [markdown]
# ### A model that cannot be exported
#
# `torch.export` records operations on symbolic tensors; it cannot follow a Python `if` on a
# tensor's *value*, because the branch taken would depend on the image. `deploy.export` turns the
# exporter's long report into one error that says what went wrong and what the exporter needs:

# %%
class BranchOnValue(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x):
        if x.mean() > 0:          # a decision on the data: not capturable as one graph
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))

try:
    deploy.export(BranchOnValue(), cache.path(f"{NOTEBOOK}/branch", [], ".onnx"), example)
except deploy.ExportError as e:
    print(e)

# %% [markdown]
# The fix is to write the decision as tensor operations (`torch.where(x.mean() > 0, a, -a)`),
# which export as one graph with both branches.
#
# ## 2 · ONNX Runtime: fp32 and static int8
#
# The int8 models are made from the ONNX files by ONNX Runtime's static quantization, as in
# notebook 02: calibrate on a few hundred training images, then insert QuantizeLinear /
# DequantizeLinear pairs (QDQ) around each operator, with int8 weights per output channel.
# ONNX Runtime fuses each pair and operator into an int8 kernel, on x86 and on Arm. Every model's
# accuracy below comes from its `.onnx` file in ONNX Runtime, on the full test set at the defaults.
#
# The activations can be uint8 or int8. ONNX Runtime's docs make int8 (S8S8) the default and warn
# that uint8 (U8S8) can saturate on x86 CPUs without VNNI
# ([data type selection](https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html));
# which is faster depends on the CPU's integer instructions. Where it could saturate (x86 without
# VNNI), the uint8 files keep 7-bit weights (`reduce_range`, the docs' remedy), so that they give
# a Pi's answers here too. Both are measured on the pruned
# model, here, and the faster one at equal validation accuracy (within 0.2 points) is used for
# every int8 model of this notebook:

# %%
calib = data.calibration_set(CALIB_IMAGES)
isa = runtime.cpu_isa()
print(f"this CPU: {isa['machine']}, PyTorch dispatch {isa['torch_capability']}, VNNI {isa['vnni']}, "
      f"flags {', '.join(isa['flags']) or '-'}")
REDUCE_RANGE = runtime.u8s8_saturates()   # uint8 x int8 could saturate here: 7-bit weights
print("uint8 activations with " + ("7-bit weights (reduce_range): no VNNI on this x86 CPU"
                                   if REDUCE_RANGE else "8-bit weights"))
act_trial = {}
for act in ("uint8", "int8"):
    where = cache.path(f"{NOTEBOOK}/pruned50-int8", [fp32_onnx["pruned50"].name, "minmax",
                                                     len(calib), act, "per-channel",
                                                     REDUCE_RANGE and act == "uint8"], ".onnx")
    path = runtime.ort_static(fp32_onnx["pruned50"], where, calib, per_channel=True, activations=act)
    sess = runtime.session(path)
    vx, vy = data.tensors("val", limit=VAL_IMAGES)
    act_trial[act] = {"val_accuracy": evaluation.accuracy_on(sess, vx, vy),
                      "latency_b1_ms": latency.latency(sess, 1, LATENCY_S)[0]}
    print(f"pruned50-int8, {act} activations: validation {100 * act_trial[act]['val_accuracy']:.2f} %, "
          f"batch 1 {act_trial[act]['latency_b1_ms']:.3f} ms")
    del sess
best_acc = max(a["val_accuracy"] for a in act_trial.values())
ACTIVATIONS = min((a for a in act_trial if act_trial[a]["val_accuracy"] >= best_acc - 0.002),
                  key=lambda a: act_trial[a]["latency_b1_ms"])
print(f"measured on this CPU: {ACTIVATIONS} activations (on another CPU, measure again)")

onnx_files = dict(fp32_onnx)
for name in torch_models:
    with runtime.Stopwatch() as sw:
        where = cache.path(f"{NOTEBOOK}/{name}-int8", [fp32_onnx[name].name, "minmax", len(calib),
                                                       ACTIVATIONS, "per-channel",
                                                       REDUCE_RANGE and ACTIVATIONS == "uint8"],
                           ".onnx")
        onnx_files[f"{name}-int8"] = runtime.ort_static(fp32_onnx[name], where, calib,
                                                        per_channel=True, activations=ACTIVATIONS)
    print(f"{name}-int8: calibrated on {len(calib)} images and quantized in {sw.s:.1f} s")

TAGS = {"teacher": ["baseline", "fp32", "onnx"],
        "teacher-int8": ["int8", "static", "per-channel", "onnx"],
        "pruned50": ["prune-structured", "finetune", "fp32", "onnx"],
        "pruned50-int8": ["prune-structured", "finetune", "int8", "static", "per-channel", "onnx"]}
records = []
for name, path in onnx_files.items():
    source = torch_models[name.removesuffix("-int8")]
    records.append(measure.measure_onnx(path, name, source, tags=TAGS[name], limit=EVAL_IMAGES,
                                        min_run_time=LATENCY_S, val=VAL_IMAGES))
    memory.release_memory()
del torch_models
display(tables.table(records))

# %% [markdown]
# `bytes` is the `.onnx` file as shipped. int8 stores each weight in one byte instead of four;
# the pruned model has half the channels of every layer, so about a quarter of the weights and
# of the multiply-adds (the `params` and `MACs` columns). The two stack.
#
# ## 3 · Threads and batch size
#
# ONNX Runtime splits each operator over `intra_op_num_threads` threads. More threads help until
# they outnumber the cores that are free; past that they take turns on the same cores and wait
# for each other. A larger batch amortises the per-call overhead and keeps the vector units busy,
# so the time *per image* drops, at the price of waiting for the batch to fill. The grid below is
# measured on this machine; a Pi 4 or Pi 5 has 4 cores, so run `predict.py --benchmark
# --threads N` there to find its best setting.

# %%
grid = {}
for name, path in onnx_files.items():
    grid[name] = deploy.latency_grid(path, threads=THREADS, batch_sizes=BATCHES,
                                     min_run_time=GRID_S)
fig, axes = plt.subplots(1, len(BATCHES), figsize=(figures.WIDTH, 4), sharey=True)
for ax, b in zip(axes, BATCHES):
    for (name, rows), marker in zip(grid.items(), figures.MARKERS):
        ys = [r["per_image_ms"] for r in rows if r["batch"] == b]
        ax.plot(THREADS, ys, marker=marker, label=name, ls="--" if name.endswith("int8") else "-")
    ax.axvline(os.cpu_count(), color="gray", ls=":", lw=1)
    ax.set_xticks(THREADS); ax.set_title(f"batch {b}")
figures.log_axis(axes[0], "y", fmt=lambda v: f"{v:g}")
axes[0].set_ylabel("ms per image (median, log scale)")
fig.supxlabel(f"intra-op threads (dotted line: the {os.cpu_count()} cores of this machine)")
fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", frameon=False)
best = {b: min((r for rows in grid.values() for r in rows if r["batch"] == b),
               key=lambda r: r["per_image_ms"])["threads"] for b in BATCHES}
fig.suptitle("Fastest thread count per batch size here: "
             + ", ".join(f"batch {b}: {t}" for b, t in best.items()))
figures.show(fig)
print("ms per image (median), by threads:")
for b in BATCHES:
    for name, rows in grid.items():
        cells = "  ".join(f"{r['threads']}: {r['per_image_ms']:8.3f}"
                          for r in rows if r["batch"] == b)
        best = min((r for r in rows if r["batch"] == b), key=lambda r: r["median_ms"])
        print(f"batch {b:3d}  {name:14s} {cells}   best: {best['threads']} thread(s)")

# %%
for name, rows in grid.items():
    at = {(r["threads"], r["batch"]): r["per_image_ms"] for r in rows}
    b1, bmax = BATCHES[0], BATCHES[-1]
    print(f"{name:14s} speed-up from 2 threads at batch {b1}: {at[(1, b1)] / at[(2, b1)]:.2f}x; "
          f"from batch {bmax} (1 thread, per image): {at[(1, b1)] / at[(1, bmax)]:.2f}x "
          "(below 1: slower)")

# %% [markdown]
# The grid uses edgelab's session settings, in which idle worker threads sleep
# (`session.intra_op.allow_spinning = 0`): steadier on a shared machine, but each wake-up costs
# time, which penalises several threads at batch 1. The bundle's `predict.py` keeps ONNX Runtime's
# defaults, where idle threads spin ([ONNX Runtime threading docs](https://onnxruntime.ai/docs/performance/tune-performance/threading.html)).
# Both settings, at 1 and 2 threads (this machine's cores), measured the same way:

# %%
settings_rows = []
for name, path in onnx_files.items():
    for ort_defaults in (False, True):
        settings_rows += [dict(r, model=name) for r in deploy.latency_grid(
            path, threads=[1, 2], batch_sizes=BATCHES, min_run_time=GRID_S, ort_defaults=ort_defaults)]
print(f"{'model':14s} {'settings':22s} " + "  ".join(f"b{b} t{t}".rjust(9) for b in BATCHES for t in (1, 2))
      + "   (ms per image, median)")
for name in onnx_files:
    for setting in ("edgelab", "onnxruntime defaults"):
        at = {(r["batch"], r["threads"]): r["per_image_ms"] for r in settings_rows
              if r["model"] == name and r["settings"] == setting}
        print(f"{name:14s} {setting:22s} " + "  ".join(f"{at[(b, t)]:9.3f}" for b in BATCHES for t in (1, 2)))
two_threads = {s: sum(r["per_image_ms"] for r in settings_rows if r["settings"] == s and r["threads"] == 2
                      and r["batch"] == BATCHES[0]) for s in ("edgelab", "onnxruntime defaults")}
print(f"batch {BATCHES[0]}, 2 threads, summed over the models: spinning (ORT defaults) takes "
      f"{two_threads['onnxruntime defaults'] / two_threads['edgelab']:.2f}x the time of sleeping threads")

# %% [markdown]
# A Pi 4 or Pi 5 has 4 cores, which this machine cannot show. The bundle's README lists published
# Pi latencies measured with 4 threads, each with its source ([its template](../edgelab/pi/template/README.md)); run `predict.py --benchmark
# --threads N` on your Pi to find its best setting.
#
# Read the grid with the machine in mind: on a shared or busy machine, threads beyond the free
# cores only add waiting, and the spread between runs grows. Splitting an operator over threads
# has a fixed cost, so it pays where each operator has plenty of work (a big model, a big batch)
# and can cost more than it saves for one small image through a small int8 model.
#
# ## 4 · Which model goes on the Pi
#
# The rule: the smallest file among the models within `MAX_DROP_PT` (1 point at the defaults) of
# the fp32 teacher's accuracy **on the validation images** (in ONNX Runtime, same run), the faster
# at batch 1 if two are equally small. The test set then reports the chosen model only. A Pi has memory to spare for any of them; the file size is a proxy for memory
# traffic, and batch-1 latency is how a camera or a button press uses the model.

# %%
teacher_rec = find(records, "teacher", "onnxruntime")
ok = [r for r in records if 100 * (teacher_rec["val_accuracy"] - r["val_accuracy"]) <= MAX_DROP_PT]
chosen = min(ok, key=lambda r: (r["bytes"], r["latency_b1_ms"]))
chosen["selected_on"] = "val"
smaller = teacher_rec["bytes"] / chosen["bytes"]
faster = teacher_rec["latency_b1_ms"] / chosen["latency_b1_ms"]
val_drop = 100 * (teacher_rec["val_accuracy"] - chosen["val_accuracy"])
delta, se = tables.paired_delta(chosen, teacher_rec)
why = (f"{chosen['name']} is the smallest of the {len(ok)} models within {MAX_DROP_PT} pt of the "
       f"fp32 teacher on {chosen['val_images']:,} validation images ({val_drop:.2f} pt below): "
       f"{smaller:.1f}x smaller, {faster:.1f}x faster at batch 1; on {chosen['test_images']:,} test "
       f"images {delta:+.2f} ±{se or 0:.2f} pt against the teacher (ONNX Runtime, this run)")
print("ships:", why)

# %% [markdown]
# ## 5 · The Pi bundle
#
# `pi.bundle.build` writes `build/pi_bundle/`, a folder that runs on its own:
#
# - `model.onnx`, the chosen model;
# - `labels.json`, the class names and the preprocessing (28×28 grayscale, the training mean and
#   standard deviation), so the script and the model cannot drift apart;
# - `predict.py`, which needs only onnxruntime, numpy and Pillow: it classifies image files
#   (converting colour and resizing other sizes, and saying so) and has a `--benchmark` mode;
# - `requirements.txt`, exact versions that have aarch64 wheels on PyPI for the Pi's Python;
# - `README.md`, the steps on Raspberry Pi OS (64-bit) and published Pi latencies.
#
# Here it runs with this machine's Python, on a few test images saved as PNG and on a colour
# photo-sized image.

# %%
bundle = pi.bundle.build(onnx_files[chosen["name"]], name=chosen["name"],
                         accuracy=chosen["accuracy"], test_images=chosen["test_images"],
                         macs=chosen["macs"],
                         notes=f"Chosen in notebooks/05_deploy_pi.ipynb: {why}.")
for f, n in pi.bundle.check(bundle).items():
    print(f"{f:18s} {n / 1e3:8.1f} kB")
pins = [line for line in (bundle / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")]
print("requirements.txt:", ", ".join(pins))

# %%
from PIL import Image

demo = WORK / "demo_images"
pngs, labels = pi.bundle.write_test_pngs(demo, 4)
big = Image.open(pngs[0]).resize((112, 112)).convert("RGB")   # a tinted colour "photo"
tinted = [band.point(lambda v, k=k: int(v * k)) for band, k in zip(big.split(), (1.0, 0.8, 0.6))]
Image.merge("RGB", tinted).save(demo / "photo-112x112-rgb.jpg")
files = [*map(str, pngs), str(demo / "photo-112x112-rgb.jpg")]
run = pi.bundle.run_predict(bundle, [*files, "--threads", "1"])
print(run.stdout.replace(str(demo) + "/", ""), run.stderr.replace(str(demo) + "/", ""), sep="")
print("true classes of the PNGs:", ", ".join(data.CLASSES[int(k)] for k in labels))
bench = pi.bundle.run_predict(bundle, ["--benchmark", "--batch", "1", "--threads", "1",
                                       "--runs", "20" if SMOKE else "200"])
print("this machine (x86), not a Pi:", bench.stdout.strip())


# %% [markdown]
# ### Your turn: the preprocessing the Pi must repeat
#
# The model never sees an image file. It sees the numbers the training pipeline made from one,
# and on the Pi `predict.py` must make the same numbers, with the constants from `labels.json`:
# 8-bit grayscale pixels become floats in [0, 1], minus the training set's mean, divided by its
# standard deviation, as float32 in the layout (N, 1, 28, 28). Write that step for a batch of
# pixel arrays; the checker runs it on a few tiny fixed arrays and says what is off.

# %%
def my_preprocess(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    # pixels: uint8 (N, H, W), 8-bit grayscale; mean and std: from labels.json
    # 1. to float32 in [0, 1]   2. (x - mean) / std   3. add the channel axis: (N, 1, H, W)
    raise NotImplementedError


# %%
preprocess = check.preprocess(my_preprocess)
meta = json.loads((bundle / "labels.json").read_text())["input"]
mean, std = meta["mean"][0], meta["std"][0]   # one per channel; grayscale has one
test_pixels, test_labels = (t[:PREP_IMAGES] for t in data.load().split("test"))
test_pixels = test_pixels.numpy()
shipped = runtime.session(bundle / "model.onnx")

feeds = {"preprocess as in training": lambda p: preprocess(p, mean, std),
         "forgot to divide by 255": lambda p: ((p - mean) / std).astype(np.float32)[:, None],
         "forgot the mean and std (pixels / 255 only)": lambda p: (p / 255).astype(np.float32)[:, None],
         "a white background (inverted pixels)": lambda p: preprocess(255 - p, mean, std)}
print(f"the shipped {chosen['name']} on {len(test_labels):,} test images, fed by:")
for label, feed in feeds.items():
    accuracy = evaluation.accuracy_on(shipped, torch.from_numpy(feed(test_pixels)), test_labels)
    print(f"  {label:45s} {100 * accuracy:5.1f} %")
del shipped

# %% [markdown]
# Only the first line is the model's accuracy. None of the others raised an error or even a
# warning: on a device, a preprocessing bug looks exactly like a bad model. That is why
# `labels.json` carries the constants and `predict.py` reads them instead of repeating them, why
# it has an `--invert` flag for dark clothes photographed on white, and why the next section
# compares predictions on the same image files, not just accuracy.

# %% [markdown]
# ## 6 · Verified on a Pi CPU, without a Pi
#
# A Raspberry Pi 4 runs four Arm Cortex-A72 cores (Armv8.0-A: NEON, no int8 dot-product
# instructions); a Pi 5 runs Cortex-A76 cores. The bundle's Python packages exist there as
# different binaries (aarch64 wheels), and ONNX Runtime picks different kernels for Arm than for
# x86. To check the bundle as it will run, `pi.emulate.verify`:
#
# 1. copies the bundle and test images (PNG files) into an arm64 Debian root filesystem
#    (Debian's own packages, with the bundle's pinned onnxruntime, numpy and Pillow installed from
#    their aarch64 wheels on PyPI);
# 2. runs the bundle's own `predict.py` there with **qemu user-mode emulation**, which translates
#    each Arm instruction into x86 ones, twice: with `QEMU_CPU=cortex-a72`, the Pi 4's core
#    (Armv8.0-A: no int8 dot product, no fp16 arithmetic), and with `cortex-a76`, the Pi 5's
#    (Armv8.2-A with both). The root filesystem is the same; only the CPU model changes. QEMU's A72
#    is close, not exact: it also offers the Armv8 crypto extensions (aes, pmull, sha1, sha2),
#    which the Pi 4's BCM2711 does not have, so code that needs them would pass here and fail on a
#    Pi 4 (the feature list is printed below);
# 3. compares every prediction with ONNX Runtime's on x86.
#
# Emulation is many times slower than a real core, by a factor that depends on the code, so the
# seconds it takes say **nothing** about a Pi's speed and are shown only as the cost of the check.
# The root filesystem is set-up, not run time: `make pi-rootfs` (or `make test`) builds it once,
# needs Linux and root, and caches it under `~/.cache/edgelab/`. On Binder (no root, no qemu) the
# next cell says so and how to enable it.

# %%
available, how = pi.emulate.available()
arm, arm_by_cpu = None, {}
if available:
    for board, qemu_cpu in pi.emulate.PI_CPUS.items():
        res = arm_by_cpu[qemu_cpu] = pi.emulate.verify(bundle, images=ARM64_IMAGES,
                                                       qemu_cpu=qemu_cpu)
        cpu = res["cpu"]
        print(f"{board}: emulated {res['machine']} (QEMU_CPU={qemu_cpu}), Python {res['python']}, "
              f"{res['runtime']} {res['runtime_version']}")
        print(f"  CPU features it reports: {' '.join(cpu['features'])}\n"
              f"  int8 dot product: {cpu['dotprod']}, fp16 arithmetic: {cpu['fp16']}, "
              f"SVE: {cpu['sve']}")
        print(f"  {res['images'] - res['mismatches']} of {res['images']} predictions equal x86's; "
              f"largest logit difference {res['max_abs_logit_diff']:.1e}; the check took "
              f"{res['emulated_seconds']:.0f} s under emulation (not a Pi's time)")
    arm = arm_by_cpu["cortex-a72"]
    crypto = [f for f in arm["cpu"]["features"] if f in ("aes", "pmull", "sha1", "sha2")]
    print(f"of the A72's features, the Pi 4's BCM2711 lacks the crypto extensions: "
          f"{' '.join(crypto) or 'none'}")
else:
    print("The arm64 check cannot run here:", how)

# %% [markdown]
# **Which kernels?** ONNX Runtime does not report the kernels it picks. Its math library, MLAS,
# chooses them once from the CPU's features: where the kernel reports the dot-product
# instructions (`asimddp`), the int8 matrix products use the UDOT/SDOT kernels, otherwise plain
# NEON ones ([`platform.cpp`](https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/mlas/lib/platform.cpp)).
# So the same int8 model runs different code on a Pi 4 and a Pi 5, and both were checked above.
#
# **Can this check fail?** An emulator that ran anything would prove nothing. ONNX Runtime 1.21.0
# was reported to die with "Illegal instruction" on Pi 4 boards; the root filesystem keeps it in a
# site folder of its own, and the next cell runs one inference with it and with the bundle's
# pinned release, on each emulated core. Exit code -4 is the signal SIGILL.

# %%
if available:
    for board, qemu_cpu in pi.emulate.PI_CPUS.items():
        r = pi.emulate.illegal_instruction_check(bundle / "model.onnx", qemu_cpu)
        print(f"{board} ({qemu_cpu}): pinned onnxruntime exit {r['pinned']}, "
              f"onnxruntime {r['old_version']} exit {r['old']}"
              + (" (SIGILL: an instruction this core does not have)" if r["sigill"] else ""))
else:
    print("The arm64 check cannot run here:", how)

# %% [markdown]
# ## 7 · How fast on a real Pi? Published figures, not measured here
#
# No Pi was used to make this workbook. The bundle's README carries published latencies of
# comparable CNN classifiers on a Pi 4 and a Pi 5, each with its source; they are printed from
# there so that the figures and their sources travel together. They are for 224×224 ImageNet
# models: the models here take 28×28 images and do far fewer multiply-adds per image:

# %%
readme = (bundle / "README.md").read_text()
print(readme[readme.index("## How fast will it be?"):].strip())
import torchvision

from torch.utils.flop_counter import FlopCounterMode

with torch.device("meta"):   # shapes only: counting needs no weights and no arithmetic
    r18 = torchvision.models.resnet18(weights=None)
    with FlopCounterMode(display=False) as flops:
        r18(torch.zeros(1, 3, 224, 224))
resnet18_224 = flops.get_total_flops() // 2
print()
print(f"multiply-adds per image: torchvision's ResNet18 at 224x224 {resnet18_224 / 1e6:,.0f} M; "
      "the models here:")
for r in records:
    print(f"  {r['name']:14s} {r['macs'] / 1e6:8.1f} M ({resnet18_224 / r['macs']:.0f}x fewer)")

# %% [markdown]
# ## Bars and records
#
# The bundle's predictions on the emulated Cortex-A72 must equal x86's on every checked image,
# the exports must match PyTorch, and the notebook must stay within its time budget.

# %%
chosen["bundle"] = {"files": sorted(pi.bundle.check(bundle)), "arm64": arm,
                    "arm64_by_cpu": arm_by_cpu}
limit_s = 60 if SMOKE else 300
elapsed = time.time() - T_START
bars = [(f"exports match PyTorch (largest logit difference <= 1e-4)",
         max(c["max_abs_diff"] for c in export_checks.values()),
         all(c["max_abs_diff"] <= 1e-4 for c in export_checks.values()))]
if arm is not None:
    for qemu_cpu, res in arm_by_cpu.items():
        bars.append((f"bundle ({chosen['name']}) on the emulated {qemu_cpu} equals x86 on every "
                     f"checked image (of {res['images']})", res["images"] - res["mismatches"],
                     res["match"]))
else:
    print("MISSED  the arm64 check did not run here (see section 6)")
bars.append((f"notebook body within {limit_s} s", elapsed, elapsed <= limit_s))
for what, value, ok in bars:
    print(f"{'met   ' if ok else 'MISSED'}  {what}: {value:.3g}")
if SMOKE:
    print("(smoke mode: small sizes, these figures are not the claims)")
path = report.write_notebook_results(NOTEBOOK, records, smoke=SMOKE)
print(f"wrote {len(records)} records to {path.relative_to(path.parents[2])}")

# %% [markdown]
# **What it means.** The export and the bundle are checked, not assumed: the ONNX files agree
# with PyTorch on real images, and the bundle's own script, with the Pi's own packages, gives the
# same answers on an emulated Pi 4 core as here. What the emulator cannot tell you is speed:
# measure it on the Pi with `python predict.py --benchmark`.
#
# **Next:** [06 · The whole pipeline](06_pipeline.ipynb) chains pruning, int8 and distillation
# and ships the model that best meets the workbook's bar.
