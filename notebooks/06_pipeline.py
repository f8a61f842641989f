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
# # 06 · The whole pipeline: from the teacher to a Raspberry Pi bundle, every stage measured
#
# The blog post behind this workbook chains its techniques: train a ResNet18, prune it, quantize it,
# distill it into a small student, deploy. It reports no measurement of the chain. This notebook runs
# the chain from the shipped checkpoints and measures every stage the same way: accuracy on the same
# test images, bytes as deployed (the `.onnx` file), and batch-1 latency in ONNX Runtime with the
# same number of threads as the fp32 teacher in ONNX Runtime. Then it picks the model to ship.
#
# **You will learn**
# - how the techniques stack, and which stage buys what;
# - to read a Pareto plot: the models worth choosing are the ones no other model beats on both axes;
# - how to pick a deployable model against a stated bar, and to say why.

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "06_pipeline"

# %%
from IPython.display import display

from edgelab import data, deploy, figures, measure, models, report, runtime
from edgelab.data import REPO_ROOT

measure.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

EVAL_IMAGES = 500 if SMOKE else None     # the full 10k test set at defaults
VAL_IMAGES = 500 if SMOKE else 5000      # validation images: the choice is made on these
CALIBRATION = 128 if SMOKE else 512      # training images for int8 calibration
LATENCY_S = 0.2 if SMOKE else 1.0        # seconds of timing per latency figure
THREADS = 1                              # one thread for every model: the Pi's runtime budget
ARM64_IMAGES = 20 if SMOKE else 300      # test images the emulated Pi CPU classifies
WORK = REPO_ROOT / "build" / "cache" / NOTEBOOK

# %% [markdown]
# ## The stages
#
# Each stage is a shipped checkpoint (trained by `python -m edgelab.train <recipe>`, see 01 and 03)
# or a conversion that runs here in seconds:
#
# | stage | what | from |
# |---|---|---|
# | teacher | ResNet18, fp32 | `teacher` (00) |
# | pruned50 | half the channels of every layer removed, fine-tuned | `pruned50` (01) |
# | pruned50-int8 | the same in int8 (ONNX Runtime static, per-channel weights, uint8 activations: 02's flows and 05 measure them against int8 on your CPU) | 02's recipe |
# | student | the small ResNet distilled from the teacher, best seed by validation accuracy | `student-kd-s*` (03) |
# | student-int8 | the same in int8 | 02's recipe |

# %%
# NBVAL_CHECK_OUTPUT
kd_students = sorted(p.stem for p in models.CHECKPOINT_DIR.glob("student-kd-s*.safetensors"))
student_name = max(kd_students, key=lambda n: models.read_card(n)["val_accuracy"])
torch_models = {"teacher": models.load_checkpoint("teacher"),
                "pruned50": models.load_checkpoint("pruned50"),
                "student": models.load_checkpoint(student_name)}
for name, m in torch_models.items():
    print(f"{name:9s} {measure.count_params(m):>11,} parameters {measure.count_macs(m):>13,} MACs")

# %%
calibration = data.calibration_set(CALIBRATION)
example = data.tensors("val", limit=2)[0]   # two images: the input shape the exporter traces
onnx_files = {}
for name, m in torch_models.items():
    # files keyed by the checkpoint's hash: a rerun reuses them, a retrained model gets new ones
    key = models.read_card(student_name if name == "student" else name)["sha256"][:12]
    onnx_files[name] = WORK / f"{name}-{key}.onnx"
    if not onnx_files[name].is_file():
        deploy.export(m, onnx_files[name], example)
    deploy.check_export(m, onnx_files[name], data.tensors("test", limit=64)[0])
    if name != "teacher":
        onnx_files[f"{name}-int8"] = runtime.ort_static(
            onnx_files[name], WORK / f"{name}-{key}-int8-{CALIBRATION}.onnx", calibration)

records = []
for name, path in onnx_files.items():
    source = torch_models[name.removesuffix("-int8")]
    tags = ["int8" if name.endswith("int8") else "fp32", "onnxruntime"]
    records.append(measure.measure(runtime.session(path, threads=THREADS), name, tags=tags,
                                   limit=EVAL_IMAGES, batch_sizes=(1,), artifact=path,
                                   val=VAL_IMAGES, params=measure.count_params(source),
                                   macs=measure.count_macs(source), min_run_time=LATENCY_S,
                                   threads=THREADS))
    measure.release_memory()
print(f"student = {student_name}")
display(report.table(records, bars={"×smaller": 15, "×faster b1": 5}))   # the deployable bar

# %% [markdown]
# ## Two Pareto plots
#
# A model is worth considering only if no other model is both smaller (or faster) and more accurate.
# The dashed line joins those models: the frontier. Everything below and to the right of it is
# beaten by something on the line. The figure is also saved as `build/pareto.png`.

# %%
front = report.pareto_front(records, "bytes")
fig = report.cost_figure(records, pareto=True, title=f"ONNX Runtime, {THREADS} thread: "
                         f"{len(front)} of {len(records)} models are on the size frontier (dashed)")
fig.savefig(REPO_ROOT / "build" / "pareto.png", dpi=120)
figures.show(fig)
for cost in ("bytes", "latency_b1_ms"):
    print(f"frontier on {cost}: " + " → ".join(r["name"] for r in report.pareto_front(records, cost)))

# %% [markdown]
# ## The report card and the model to ship
#
# The bar for a deployable model: **at least 15x smaller and 5x faster** (ONNX Runtime, batch 1)
# than the fp32 teacher in ONNX Runtime, **within 1.0 point** of its accuracy. The cell checks every
# stage against it **on the validation images** and picks, among the stages that meet it, the
# fastest; if none meets it, it says so and ships the most accurate model within a point. The test
# set only reports the chosen one (and, for reading, the others): its "±" is the standard error of
# the paired difference with the teacher on the same test images.

# %%
t = report.find(records, "teacher")
card = []
for r in records:
    smaller, faster = t["bytes"] / r["bytes"], t["latency_b1_ms"] / r["latency_b1_ms"]
    gap_val = 100 * (t["val_accuracy"] - r["val_accuracy"])
    delta, se = report.paired_delta(r, t)
    meets = smaller >= 15 and faster >= 5 and gap_val <= 1.0
    card.append({"name": r["name"], "smaller": smaller, "faster": faster, "gap": gap_val,
                 "meets": meets})
    print(f"{r['name']:14s} val {100 * r['val_accuracy']:6.2f} % ({-gap_val:+5.2f} pt)   "
          f"test {100 * r['accuracy']:6.2f} % ({delta:+5.2f} ±{se or 0:.2f} pt)   "
          f"{smaller:6.1f}x smaller  {faster:5.1f}x faster   {'meets the bar' if meets else '-'}")

meeting = [c for c in card if c["meets"]]
if meeting:
    pick = min(meeting, key=lambda c: report.find(records, c["name"])["latency_b1_ms"])
    why = (f"it meets the bar on validation ({pick['smaller']:.1f}x smaller, {pick['faster']:.1f}x "
           f"faster, {-pick['gap']:+.2f} pt) and is the fastest of the {len(meeting)} stage(s) "
           "that do")
else:
    close = [c for c in card if c["gap"] <= 1.0 and c["name"] != "teacher"] or card
    pick = max(close, key=lambda c: c["smaller"] * c["faster"])
    why = "no stage meets the whole bar in this run; it is the best trade-off within a point"
report.find(records, pick["name"])["tags"].append("deployable")
report.find(records, pick["name"])["selected_on"] = "val"
print(f"\nships: {pick['name']}, because {why}.")

# %% [markdown]
# ## The bundle, checked on an emulated Pi CPU
#
# `edgelab.deploy` writes the bundle (model, labels, a `predict.py` that needs only onnxruntime,
# numpy and Pillow, pinned requirements, a README with the steps on Raspberry Pi OS) to
# `build/pi_bundle/`, then runs that `predict.py` on an emulated Cortex-A72 (the Pi 4's core) and
# compares its predictions with this machine's. Emulated time says nothing about a Pi's speed and
# is not reported as such; see 05 for published Pi figures.

# %%
chosen = report.find(records, pick["name"])
bundle = deploy.build_bundle(onnx_files[pick["name"]], name=pick["name"],
                             accuracy=chosen["accuracy"], test_images=chosen["test_images"],
                             macs=chosen["macs"],
                             notes=f"Chosen by notebooks/06_pipeline.ipynb: {why}.")
print("bundle:", ", ".join(f"{f} ({n / 1e3:.0f} kB)" for f, n in deploy.check_bundle(bundle).items()))
available, how = deploy.arm64_available()
if available:
    arm = deploy.verify_arm64(bundle, images=ARM64_IMAGES)
    print(f"emulated {arm['machine']} (QEMU_CPU cortex-a72), onnxruntime {arm['onnxruntime']}: "
          f"{arm['images'] - arm['mismatches']} of {arm['images']} predictions equal x86's; "
          f"largest logit difference {arm['max_abs_logit_diff']:.1e}")
else:
    arm = None
    print("The arm64 check cannot run here:", how)

# %%
test_gap = 100 * (t["accuracy"] - report.find(records, pick["name"])["accuracy"])
bars = [
    (f"deployable ({pick['name']}): >= 15x smaller than the ORT fp32 teacher", pick["smaller"],
     pick["smaller"] >= 15),
    (f"deployable ({pick['name']}): >= 5x faster at batch 1 in ORT", pick["faster"],
     pick["faster"] >= 5),
    (f"deployable ({pick['name']}): within 1.0 pt of the teacher on test (chosen on validation)",
     test_gap, test_gap <= 1.0),
]
if arm is not None:
    bars.append(("bundle's predictions on the emulated Cortex-A72 equal x86's",
                 arm["images"] - arm["mismatches"], arm["match"]))
for what, value, ok in bars:
    print(f"{'met   ' if ok else 'MISSED'}  {what}: {value:.2f}")
if SMOKE:
    print("(smoke mode: small sizes, these figures are not the claims)")
path = report.write_notebook_results(NOTEBOOK, records, smoke=SMOKE)

# %% [markdown]
# **What it means.** The stages do not add up by themselves: each one's accuracy cost and each
# one's gain are measured above, in this run. Channel pruning and int8 stack well because they cut
# different things (how many weights, how many bytes each), and the frontier shows which of the
# blog's stages a real deployment would keep.
