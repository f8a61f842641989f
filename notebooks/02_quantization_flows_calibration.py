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
# # 02 · Quantization calibration: how the activation ranges are chosen
#
# Static int8 fixes each activation's range before deployment, from a few calibration images
# ([02 · Quantization flows](02_quantization_flows.ipynb), parts 4 and 6). *How* the range is read
# from those images is the calibration method. A range that covers every value wastes codes on
# rare outliers; a clipped range rounds the common values more finely and saturates the rare
# ones. This notebook calibrates the teacher with ONNX Runtime's three calibrators and with
# torch.ao's two activation observers, all on the same images, and measures each on validation
# (where the choice is made) and on the test set (for the report).
#
# **You will learn**
# - what MinMax, Percentile and Entropy calibration do, and which one each library uses by default;
# - how to compare calibrators fairly: same images, same model, and a difference that counts only
#   beyond two paired standard errors;
# - what the calibrators changed in the graph: the ranges themselves.
#
# **Time:** a few minutes at the defaults, most of it accuracy on the full 10k test set for seven
# models (the [facilitator guide](../docs/facilitator.md) lists the measured run time); about a
# minute in smoke mode.

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "02_quantization_flows_calibration"

# %%
import inspect
import time

import matplotlib.pyplot as plt
import numpy as np
import onnx
import torch
from IPython.display import display

from edgelab import (calibration, data, evaluation, figures, measure, memory, models, quantize,
                     report, runtime, tables)
from edgelab.records import find

memory.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

T_START = time.time()
EVAL_IMAGES = 200 if SMOKE else None      # None: the full 10k test set, for the report
VAL_IMAGES = 200 if SMOKE else 2000       # validation images: where the method is chosen
# The same calibration images for every method. ONNX Runtime's Percentile and Entropy keep every
# intermediate output of every calibration image until they are done: 64 images of the teacher
# stay within the notebook's 1.5 GB; 256 would not.
CALIB_IMAGES = 16 if SMOKE else 64
NOISE_SE = 2                               # a lead counts beyond this many paired standard errors
print(f"smoke mode: {SMOKE}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads")

# %% [markdown]
# ## 1 · Three calibrators, two observers
#
# - **MinMax** takes the smallest and largest value seen: nothing saturates, and one outlier
#   stretches the step for every other value.
# - **Percentile** (ONNX Runtime) builds a histogram of |x| and clips at a high percentile of it.
# - **Entropy** (ONNX Runtime) picks the clipping threshold whose quantized histogram is closest
#   to the original in KL divergence, the method TensorRT introduced
#   ([Migacz, 8-bit inference with TensorRT, GTC 2017](https://on-demand.gputechconf.com/gtc/2017/presentation/s7310-8-bit-inference-with-tensorrt.pdf)).
# - **HistogramObserver** (PyTorch) also keeps a histogram, and searches for the range whose
#   quantization error (squared, over the histogram) is least
#   ([its source](https://github.com/pytorch/pytorch/blob/main/torch/ao/quantization/observer.py)).
#
# The calibrators' settings, and which observer each PyTorch flow uses by default, read from the
# installed libraries ([ONNX Runtime's calibrators](https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/python/tools/quantization/calibrate.py)):

# %%
# NBVAL_CHECK_OUTPUT
from onnxruntime.quantization import CalibrationMethod, quantize_static
from onnxruntime.quantization import calibrate as ort_calibrate

print("ONNX Runtime's CalibrationMethod:", ", ".join(m.name for m in CalibrationMethod)
      + "; quantize_static's default: "
      + str(inspect.signature(quantize_static).parameters["calibrate_method"].default))
for cls in (ort_calibrate.PercentileCalibrater, ort_calibrate.EntropyCalibrater):
    params = inspect.signature(cls).parameters
    shown = {k: params[k].default for k in ("num_bins", "num_quantized_bins", "percentile")
             if k in params}
    print(f"  {cls.__name__}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
ent = inspect.signature(ort_calibrate.EntropyCalibrater).parameters
candidates = ent["num_bins"].default // 2 - ent["num_quantized_bins"].default // 2 + 1
print(f"  so Entropy's search (get_entropy_threshold) tries {candidates} clipping threshold(s)")
with runtime.quiet():
    eager_act = torch.ao.quantization.get_default_qconfig("x86").activation()
# an observer made by the quantizer's own constructor, to read its class
pt2e_act = type(quantize.x86_quantizer().global_config.input_activation.observer_or_fake_quant_ctr())
print(f"PyTorch eager flow, get_default_qconfig('x86'): activations observed by "
      f"{type(eager_act).__name__} ({eager_act.bins} bins), codes {eager_act.quant_min}..{eager_act.quant_max}")
print(f"PT2E, X86InductorQuantizer's default config: activations observed by "
      f"{pt2e_act.__module__.split('.')[0]}'s {pt2e_act.__name__}")

# %% [markdown]
# Both PyTorch flows therefore already calibrate with a histogram; the experiment below asks what
# that default buys over plain MinMax. ONNX Runtime's default is the first line's. The bins and
# the percentile are the calibrator classes' defaults, which `quantize_static` keeps: its
# `extra_options` can change the percentile (`CalibPercentile`) but not the bins
# ([its source](https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/python/tools/quantization/quantize.py)).
# Entropy searches thresholds from `num_quantized_bins` to `num_bins` wide; where the two are equal
# it has a single candidate, the whole histogram, and cannot clip. Section 6 shows what that does
# to its ranges.
#
# ## 2 · The same model, the same images
#
# The fp32 teacher is measured in both runtimes, so every int8 model is compared with fp32 in its
# own runtime. Calibration doesn't change the graph, so bytes and speed are the same for every
# calibrator (checked below); only accuracy is measured.

# %%
teacher = models.load_checkpoint("teacher")
calib = data.calibration_set(CALIB_IMAGES)
val_masks = {}   # which validation images each model got right: for the paired ± there


def with_val(record, model):
    """Adds validation accuracy, and keeps its per-image mask for the paired standard error."""
    mask = evaluation.correct_mask(model, VAL_IMAGES, split="val")
    record.val_accuracy, record.val_images = float(mask.float().mean()), len(mask)
    val_masks[(record["name"], record["runtime"])] = mask
    return record


def val_delta(a, b):
    """Validation accuracy of a minus b in points, and its paired standard error."""
    ra, rb = ({"accuracy": r["val_accuracy"], "test_images": r["val_images"],
               "correct": evaluation.pack_mask(val_masks[(r["name"], r["runtime"])])} for r in (a, b))
    return tables.paired_delta(ra, rb)


# the fp32 baselines on the test set only: the choices below are between int8 models
records = [measure.measure(teacher, "teacher", tags=["baseline", "fp32"], limit=EVAL_IMAGES,
                           batch_sizes=())]
fp32_path = calibration.fp32_onnx(teacher, calib[:2], f"{NOTEBOOK}/teacher")
records.append(measure.measure_onnx(fp32_path, "teacher", teacher, tags=["baseline", "fp32", "onnx"],
                                    limit=EVAL_IMAGES, batch_sizes=()))
for r in records:
    print(f"fp32 teacher in {r['runtime']}: test {100 * r['accuracy']:.2f} % ({r['test_images']:,} images)")
print(f"calibration: the same {len(calib)} training images (balanced over the classes) for every method")

# %% [markdown]
# ## 3 · ONNX Runtime: MinMax, Percentile, Entropy
#
# QDQ format, per-channel int8 weights, uint8 activations, as in 02 · Quantization flows part 6;
# only `calibrate_method` changes. Each file goes through the one cache
# (`calibration.ort_calibrated`), keyed by the model, the images and the options.

# %%
ort_paths = {}
for method in calibration.METHODS:
    t0 = time.time()
    ort_paths[method] = calibration.ort_calibrated(teacher, calib, method, name=f"{NOTEBOOK}/teacher")
    took = time.time() - t0
    cached = ort_paths[method].stat().st_mtime < t0
    session = runtime.session(ort_paths[method])
    records.append(with_val(measure.measure_onnx(
        ort_paths[method], f"ort-{method}", teacher, session=session,
        tags=["int8", "static", "per-channel", "onnx", f"calibration-{method}"],
        limit=EVAL_IMAGES, batch_sizes=()), session))
    del session
    r = records[-1]
    print(f"{method:>10}: " + ("from the cache" if cached else f"calibrated in {took:.0f} s")
          + f"; validation {100 * r['val_accuracy']:.2f} %, test {100 * r['accuracy']:.2f} %")
ops = {m: [n.op_type for n in onnx.load(str(p)).graph.node] for m, p in ort_paths.items()}
print(f"the {len(ops)} int8 graphs have the same {len(ops['minmax'])} operators in the same order: "
      f"{len({tuple(o) for o in ops.values()}) == 1}; file sizes "
      + ", ".join(f"{m} {p.stat().st_size:,} B" for m, p in ort_paths.items()))

# %% [markdown]
# ## 4 · PyTorch: MinMax against the default HistogramObserver
#
# The eager flow of 02 · Quantization flows (fused Conv+BN+ReLU, per-channel int8 weights), once
# with its default activation observer and once with every activation observer replaced by a
# MinMaxObserver of the same dtype and range (`calibration.use_activation_observer`), before the
# same calibration images go through. It needs a quantized CPU engine; without one the notebook
# carries on with ONNX Runtime's rows.

# %%
try:
    ENGINE = quantize.quantized_engine()
except quantize.NoQuantizedEngine as e:
    ENGINE = None
    print(e)
if ENGINE:
    for observer in ("minmax", "histogram"):
        prepared = quantize.eager_prepare(teacher, per_channel=True)
        if observer != "histogram":   # histogram is the default: left as prepared
            with runtime.quiet():
                calibration.use_activation_observer(prepared, observer)
        kinds = sorted({type(m.activation_post_process).__name__ for m in prepared.modules()
                        if hasattr(m, "activation_post_process")})
        t0 = time.time()
        q_model = quantize.eager_convert(quantize.calibrate(prepared, calib))
        took = time.time() - t0
        name = f"eager-{observer}" + ("-default" if observer == "histogram" else "")
        records.append(with_val(measure.measure(
            q_model, name, tags=["int8", "static", "per-channel", f"observer-{observer}"],
            limit=EVAL_IMAGES, batch_sizes=(), macs=records[0]["macs"]), q_model))
        r = records[-1]
        print(f"{name:>17} ({', '.join(kinds)}): calibrated and converted in {took:.0f} s; "
              f"validation {100 * r['val_accuracy']:.2f} %, test {100 * r['accuracy']:.2f} %")
        del prepared, q_model

# %% [markdown]
# ## 5 · Side by side, and the choice
#
# The test accuracies of the table below are for the report; the choice between the methods is
# made on validation, and a method counts as better than its library's default only if it leads
# by more than two paired standard errors of the difference (from the images on which the two
# disagree), as in 01_pruning_importance and 06: one standard error is crossed by chance about
# one time in three.

# %%
display(tables.table(records))
verdicts = {}
flows = {"onnxruntime": ("ONNX Runtime", [f"ort-{m}" for m in calibration.METHODS], "ort-minmax")}
if ENGINE:
    flows["torch"] = ("PyTorch eager", ["eager-minmax", "eager-histogram-default"], "eager-histogram-default")
for rt, (label, names, default) in flows.items():
    rows = [find(records, n, rt) for n in names]
    base = find(records, default, rt)
    print(f"{label}, validation ({base['val_images']:,} images), against the default {default}:")
    for r in rows:
        d, se = val_delta(r, base)
        print(f"  {r['name']:>24}: {100 * r['val_accuracy']:.2f} %  ({d:+.2f} ±{se:.2f} pt)")
    best = max(rows, key=lambda r: (r["val_accuracy"], r["name"] == default))   # ties: the default
    d, se = val_delta(best, base)
    real = best is not base and abs(d) > NOISE_SE * se
    pick = best if real else base
    dt, set_ = tables.paired_delta(pick, find(records, "teacher", rt))
    verdicts[rt] = {"best_on_val": best["name"], "default": default, "val_delta_pt": d,
                    "val_se_pt": se, "real": real, "chosen": pick["name"],
                    "test_accuracy": pick["accuracy"], "test_delta_vs_fp32_pt": dt}
    print(f"  -> {label}: " + (f"{best['name']} beats the default by {d:+.2f} pt, beyond {NOISE_SE} "
                               f"paired SE of {se:.2f}: choose it" if real else
                               f"no method beats {default} by more than {NOISE_SE} paired SE "
                               f"(best {best['name']}, {d:+.2f} ±{se:.2f} pt): keep the default")
          + f"; on test {pick['name']} is {100 * pick['accuracy']:.2f} % "
          f"({dt:+.2f} ±{set_:.2f} pt against fp32 in {rt})")
changed = [f"{flows[rt][0]} {v['chosen']}" for rt, v in verdicts.items() if v["real"]]
print("In one sentence: " + (f"a calibrator beat its library's default beyond {NOISE_SE} paired SE on "
                             f"validation ({'; '.join(changed)})" if changed else
                             "on this teacher no calibrator beat its library's default by more than "
                             f"{NOISE_SE} paired SE on validation, so the defaults stay")
      + f"; every chosen model is within {max(abs(v['test_delta_vs_fp32_pt']) for v in verdicts.values()):.2f}"
      " pt of fp32 on test.")

# %% [markdown]
# ## 6 · What the calibrators changed: the ranges
#
# Each QuantizeLinear in ONNX Runtime's QDQ graph maps a range onto the 256 uint8 codes
# (`calibration.activation_ranges` reads them back). Below, each activation's range under
# Percentile and Entropy as a share of MinMax's, in graph order from the input to the logits:

# %%
ranges = {m: calibration.activation_ranges(p) for m, p in ort_paths.items()}
tensors = [k for k in ranges["minmax"] if all(k in ranges[m] for m in ranges)]
width = {m: np.array([ranges[m][k][1] - ranges[m][k][0] for k in tensors]) for m in ranges}
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.4))
for m in ("percentile", "entropy"):
    ax.plot(width[m] / width["minmax"], marker="o", ms=3, label=m)
ax.axhline(1, color="0.6", lw=1, label="minmax")
ax.set_xlabel(f"activation tensor ({len(tensors)}, input to logits)")
ax.set_ylabel("range / MinMax's range")
narrower = {m: int((width[m] / width["minmax"] < 0.99).sum()) for m in ("percentile", "entropy")}
ax.set_title(f"Percentile narrows {narrower['percentile']} of {len(tensors)} ranges, "
             f"Entropy {narrower['entropy']}")
ax.legend(loc="lower right"); figures.show(fig)
for m in ("percentile", "entropy"):
    ratio = width[m] / width["minmax"]
    print(f"{m}: {int((ratio < 0.99).sum())} of {len(tensors)} ranges narrower than MinMax's, "
          f"{int((ratio > 1.01).sum())} wider; narrowest {ratio.min():.0%} ({tensors[int(ratio.argmin())]})")

# %% [markdown]
# A narrower range rounds the common values more finely and saturates the rare large ones. Whether
# that pays depends on the activations. Where the verdicts above keep the default, clipping bought
# nothing measurable on this teacher, which suggests its activations have few outliers worth
# clipping and MinMax wastes little. Models with outlier activations, such as large transformers
# ([Dettmers et al., 2022](https://arxiv.org/abs/2208.07339)), are where clipping calibrators are
# known to matter: measure them the same way, choosing on validation.

# %% [markdown]
# ## Save this run's records

# %%
path = report.write_notebook_results(NOTEBOOK, records, smoke=SMOKE, verdicts={"calibration": verdicts})
print(f"wrote {len(records)} records to {path.relative_to(path.parents[2])}; "
      f"notebook body ran in {time.time() - T_START:.0f} s")

# %% [markdown]
# **Next:** [03 · Distillation](03_distillation.ipynb) trains a much smaller student to imitate
# this teacher; quantizing that student stacks the savings.
