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
# # 00 · Baseline: the data, the teacher, and what it costs
#
# Every later notebook makes a model smaller or faster. Before that, we need an honest baseline,
# measured on *your* machine: how accurate the teacher is, how many bytes it takes, how long one
# prediction takes, and where its arithmetic goes.
#
# **You will learn**
# - what Fashion-MNIST looks like and how edgelab finds and verifies it;
# - why the teacher is a ResNet18 with a small-image stem;
# - the six numbers `edgelab.measure.measure()` reports for every model in this workbook;
# - which layers do most of the multiply-accumulates (MACs);
# - how far a ResNet18 is from the memory of real edge devices.
#
# **Time:** about 2 minutes at the defaults on a 2-core laptop; under a minute in smoke mode.

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "00_baseline"

# %%
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from edgelab import counts, data, evaluation, figures, measure, memory, models, report, tables

memory.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

EVAL_IMAGES = 1000 if SMOKE else None   # None: the full 10k test set
LATENCY_S = 0.2 if SMOKE else 1.0       # seconds of timing per batch size
print(f"smoke mode: {SMOKE}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads")

# %% [markdown]
# ## The data
#
# Fashion-MNIST: 70,000 grayscale 28×28 pictures of clothes in 10 classes. edgelab looks in
# `$EDGELAB_DATA`, then `data/fashion-mnist/`, then Debian's `/usr/share/datasets/fashion-mnist/`,
# and checks the sha256 of each file's *decompressed* bytes before using it. A fixed 5,000 images of
# the training set are held out for validation, the same on every machine.

# %%
ds = data.load()
print(f"found in {ds.source}")
print(f"train {len(ds.train_images):,} · validation {len(ds.val_images):,} · test {len(ds.test_images):,}")

# %%
fig, axes = plt.subplots(3, 10, figsize=(figures.WIDTH, 4))
for c, name in enumerate(data.CLASSES):
    picks = torch.nonzero(ds.test_labels == c).flatten()[:3]
    for row, i in enumerate(picks):
        ax = axes[row, c]
        ax.imshow(ds.test_images[i], cmap="gray_r")
        ax.set_xticks([]); ax.set_yticks([])
        if row == 0:
            ax.set_title(name, fontsize=9)
fig.suptitle("Three test images of each of the ten classes (28 x 28 grayscale)")
figures.show(fig)

# %% [markdown]
# Each class has the same number of test images, so plain accuracy is a fair summary, and guessing
# scores 10 %. Shirts, T-shirts, pullovers and coats look alike at 28×28; the teacher's confusion
# matrix, below, shows whether that is where its mistakes are.

# %%
print("test images per class:", torch.bincount(ds.test_labels).tolist())

# %% [markdown]
# ## The teacher: ResNet18 with a small-image stem
#
# torchvision's ResNet18 was built for 224×224 photos: a 7×7 stride-2 convolution and a max-pool
# shrink the picture 4× before the first residual block. On a 28×28 image that leaves 7×7 pixels
# for the blocks to work with. edgelab swaps the stem for one 3×3 stride-1 convolution with one
# input channel and keeps the max-pool, so the blocks see 14×14 (the docstring of
# `edgelab.models.teacher` explains the trade-off). Everything else is the stock ResNet18.
#
# The trained weights ship in `data/checkpoints/` with a JSON card. Loading checks the file's
# sha256 against the card and reads it with safetensors, which holds tensors only and cannot run code.

# %%
teacher = models.load_checkpoint("teacher")
card = models.read_card("teacher")
print(f"stem: {teacher.conv1} then {teacher.maxpool}")
print(f"trained by `{card['command']}`: {card['epochs']} epochs, seed {card['seed']}, "
      f"{card['wall_time_s'] / 60:.0f} min on {card['device']} ({card['threads']} threads)")
print(f"test accuracy recorded in the card: {100 * card['test_accuracy']:.2f} % "
      f"(we measure it again below)")

# %% [markdown]
# ### The blog's `resnet18(pretrained=True)`
#
# The blog post starts from `resnet18(pretrained=True)`. What does that line do with the
# torchvision this workbook pins? The cell runs it with torchvision's downloader replaced by one
# that refuses, so nothing is fetched, and prints every warning it gives.

# %%
import warnings
from unittest import mock

import torchvision
import torchvision.models._api as tv_api
from torchvision.models import ResNet18_Weights, resnet18


def refuse_download(url, *args, **kwargs):
    raise ConnectionRefusedError(f"download refused by this notebook: {url}")


with warnings.catch_warnings(record=True) as caught, \
        mock.patch.object(tv_api, "load_state_dict_from_url", refuse_download):
    warnings.simplefilter("always")
    try:
        resnet18(pretrained=True)
        outcome = "built without a download (weights already cached?)"
    except ConnectionRefusedError as e:
        outcome = str(e)
print(f"torchvision {torchvision.__version__}, resnet18(pretrained=True):")
for w in caught:
    print(f"  {w.category.__name__}: {w.message}")
print(f"  then: {outcome}")
weights = ResNet18_Weights.DEFAULT
print(f"ResNet18_Weights.DEFAULT is {weights}: ImageNet top-1 {weights.meta['_metrics']['ImageNet-1K']['acc@1']} %, "
      f"inputs {weights.transforms().crop_size} px colour crops")
seed_claims = {"4": report.seed_claim(
    "torchvision.models.resnet18(pretrained=True), torchvision's downloader patched to refuse",
    {"warnings": [str(w.message) for w in caught], "then": outcome, "maps_to": str(weights),
     "url": weights.url})}

# %% [markdown]
# So `pretrained=True` still works but is deprecated (since torchvision 0.13, says the warning);
# it maps to the weights enum printed above, and its replacement is
# `resnet18(weights=ResNet18_Weights.DEFAULT)`
# ([torchvision's model docs](https://docs.pytorch.org/vision/stable/models.html)). Either way it
# needs the network, and the weights it fetches were learned on 224×224 colour photos. This
# workbook trains its own teacher on 1×28×28 grayscale images instead: no download at run time, and
# a stem that suits the images (above).

# %% [markdown]
# For scale, the **student** that notebook 03 distils: a small ResNet with real residual blocks
# (16, 32 and 64 channels), here untrained. Parameter counts depend only on the architecture, so
# they are the same on every machine:

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)  # the untrained student's random weights, the same in every run
student = models.student().eval()
print(f"teacher parameters: {counts.count_params(teacher):,}")
print(f"student parameters: {counts.count_params(student):,}")

# %% [markdown]
# ## One measurement for every model
#
# `measure()` returns one record per model: accuracy on the test set, parameters (all and
# non-zero), MACs for one image (from `torch.utils.flop_counter`), the bytes of the file that would
# ship (raw and gzip-compressed) and CPU latency at batch 1 and 64 (median and 90th percentile after
# a warm-up, with the thread count). Every later notebook measures the teacher again in its own run,
# so each ratio compares two models timed on the same machine at the same moment.
#
# **How to read `Δ pt ±`.** `Δ pt` is a model's accuracy minus the teacher's, in points, on the
# same test images. The `±` after it is the standard error of that *paired* difference: it comes
# from the images on which the two models disagree (the idea behind McNemar's test), so for two
# similar models it is far smaller than the binomial standard error each accuracy has on its own
# (printed below for the teacher). A difference smaller than about two of its standard errors is
# not evidence that the models differ.

# %%
records = [
    measure.measure(teacher, "teacher", tags=["baseline", "fp32"], limit=EVAL_IMAGES,
                    min_run_time=LATENCY_S),
    measure.measure(student, "student-untrained", tags=["student", "fp32"], limit=EVAL_IMAGES,
                    min_run_time=LATENCY_S),
]
display(tables.table(records))

# %%
t, s = records
print(f"The teacher gets {100 * t['accuracy']:.2f} % of {t['test_images']:,} test images right "
      f"(binomial standard error on its own: ±"
      f"{100 * (t['accuracy'] * (1 - t['accuracy']) / t['test_images']) ** 0.5:.2f} pt); "
      f"the untrained student {100 * s['accuracy']:.1f} % (chance is 10 %).")
print(f"The student is {t['bytes'] / s['bytes']:.0f}x smaller, needs {t['macs'] / s['macs']:.1f}x fewer MACs "
      f"and answers one image {t['latency_b1_ms'] / s['latency_b1_ms']:.1f}x faster; "
      f"notebook 03 asks how much accuracy it can learn back.")

# %% [markdown]
# **How strong is this teacher?** Fashion-MNIST's own benchmark table lists a user-submitted
# ResNet18 at 94.9 % ([the dataset's README](https://github.com/zalandoresearch/fashion-mnist#benchmark),
# not re-run by its authors); the teacher's figure above is from this run, after a few epochs of
# training on 2 CPU cores. A ResNet18 is also far more network than 28×28 grayscale images need:
# notebook 03 measures how close the student above, with a small fraction of its parameters, gets. Compression
# therefore looks cheaper here than it would on ImageNet, where the big model's extra capacity is
# used.
#
# Where does it go wrong? The confusion matrix of its test predictions:

# %%
test_x, test_y = data.tensors("test", limit=EVAL_IMAGES)
pred = evaluation.predict_logits(teacher, test_x).argmax(1)
confusion = torch.zeros(10, 10, dtype=torch.long)
confusion.index_put_((test_y, pred), torch.ones_like(pred), accumulate=True)
mistakes = confusion.clone().fill_diagonal_(0)
i, j = divmod(int(mistakes.argmax()), 10)
fig, ax = plt.subplots(figsize=(7, 6.2))
ax.imshow(confusion.log1p(), cmap="Blues")
ax.set_xticks(range(10), data.CLASSES, rotation=90)
ax.set_yticks(range(10), data.CLASSES)
ax.set_xlabel("predicted class"); ax.set_ylabel("true class"); ax.grid(False)
for a in range(10):
    for b in range(10):
        if confusion[a, b]:
            ax.text(b, a, int(confusion[a, b]), ha="center", va="center", fontsize=8,
                    color="white" if a == b else "black")
ax.set_title(f"Teacher, {len(test_y):,} test images (colour: log count):\n"
             f"the most common mistake is {data.CLASSES[i]} taken for {data.CLASSES[j]}")
figures.show(fig)
top = sorted(((int(mistakes[i, j]), i, j) for i in range(10) for j in range(10) if i != j),
             reverse=True)[:5]
print(f"{int(mistakes.sum())} mistakes; the most frequent (true -> predicted): " + "; ".join(
    f"{data.CLASSES[i]} -> {data.CLASSES[j]} {n}" for n, i, j in top))
del test_x

# %% [markdown]
# ## Where the MACs go
#
# A convolution's cost is (output pixels) × (output channels) × (input channels) × (kernel area).
# The stages of a ResNet halve the picture and double the channels, which keeps the cost per stage
# roughly level, so no single layer dominates. The bars show the teacher, layer by layer:

# %%
per_layer = counts.macs_by_layer(teacher)
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.5))
ax.bar(range(len(per_layer)), [m / 1e6 for m in per_layer.values()])
ax.set_xticks(range(len(per_layer)), list(per_layer), rotation=90, fontsize=9)
ax.set_ylabel("million MACs per image")
ax.set_title(f"Teacher: no layer takes more than {max(per_layer.values()) / sum(per_layer.values()):.0%}"
             " of the multiply-accumulates (batch 1)")
figures.show(fig)

total = sum(per_layer.values())
for stage in ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]:
    share = sum(m for n, m in per_layer.items() if n.split(".")[0] == stage) / total
    print(f"{stage:>7}: {100 * share:5.1f} % of {total / 1e6:.0f} M MACs")

# %% [markdown]
# The 3×3 convolutions inside the four stages do nearly all the work; the 1×1 shortcut projections
# and the final classifier are almost free. That is why notebooks 01 (channel pruning) and 04
# (low-rank factors) go after exactly those 3×3 layers.
#
# ## What "edge" means in bytes
#
# Published figures for a few devices people deploy to (not measured here; sources linked):
#
# | device | processor | RAM | storage for the model | source |
# |---|---|---|---|---|
# | Raspberry Pi 5 | 4× Cortex-A76, 2.4 GHz | 2–16 GB | SD card | [product brief](https://datasheets.raspberrypi.com/rpi5/raspberry-pi-5-product-brief.pdf) |
# | Raspberry Pi 4 Model B | 4× Cortex-A72, 1.8 GHz | 1–8 GB | SD card | [product brief](https://datasheets.raspberrypi.com/rpi4/raspberry-pi-4-product-brief.pdf) |
# | Raspberry Pi Zero 2 W | 4× Cortex-A53, 1 GHz | 512 MB | SD card | [product brief](https://datasheets.raspberrypi.com/rpizero2/raspberry-pi-zero-2-w-product-brief.pdf) |
# | STM32F746 microcontroller | Cortex-M7, 216 MHz | 320 KB SRAM | 1 MB flash | [ST datasheet](https://www.st.com/resource/en/datasheet/stm32f746ng.pdf) |
# | Arduino Nano 33 BLE Sense (nRF52840) | Cortex-M4F, 64 MHz | 256 KB SRAM | 1 MB flash | [Arduino docs](https://docs.arduino.cc/hardware/nano-33-ble-sense/) |

# %%
budgets = {"Raspberry Pi Zero 2 W RAM": 512e6, "STM32F746 / nRF52840 flash": 1e6,
           "STM32F746 SRAM": 320e3, "nRF52840 SRAM": 256e3}
print(f"{'budget':<28}" + "".join(f"{r['name']:>22}" for r in records))
for what, size in budgets.items():
    cells = ["fits" if r["bytes"] <= size else f"{r['bytes'] / size:.1f}x too big" for r in records]
    print(f"{what + f' ({size / 1e6:g} MB)':<28}" + "".join(f"{c:>22}" for c in cells))

# %% [markdown]
# A Pi has room for the teacher; a microcontroller has not, by a wide margin. That table compares
# the whole file with each budget, which is the right test for a Pi (everything sits in RAM) but
# not for a microcontroller: there the weights stay in **flash**, read in place, and **SRAM** holds
# what a forward pass computes, the activations. The largest set of activations alive at one time
# (the input, each output until its last use, a residual branch across its whole block) is what
# SRAM must hold. Measured by walking the traced graph of a batch-1 forward pass
# (`counts.peak_activation_bytes`; no in-place reuse assumed, so a runtime's memory planner can
# do somewhat better), in fp32 and in int8 (one byte a value):

# %%
mcu = {"STM32F746": (1e6, 320e3), "nRF52840": (1e6, 256e3)}   # (flash, SRAM) bytes, linked above
memory_rows = {}
for r, model in zip(records, (teacher, student)):
    weights = counts.count_params(model)
    acts = {b: counts.peak_activation_bytes(model, (1, 1, 28, 28), bytes_per_value=b) for b in (4, 1)}
    memory_rows[r["name"]] = {"weights_fp32": 4 * weights, "weights_int8": weights,
                              "activations_fp32": acts[4]["peak_bytes"],
                              "activations_int8": acts[1]["peak_bytes"], "peak_at": acts[4]["at"]}
    m = memory_rows[r["name"]]
    print(f"{r['name']}: weights {m['weights_fp32'] / 1e3:,.0f} KB fp32 / {m['weights_int8'] / 1e3:,.0f} KB "
          f"int8; peak activations {m['activations_fp32'] / 1e3:,.0f} KB fp32 / "
          f"{m['activations_int8'] / 1e3:,.0f} KB int8 (at `{m['peak_at']}`)")
    for dev, (flash, sram) in mcu.items():
        for dt in ("fp32", "int8"):
            fits = [m[f"weights_{dt}"] <= flash, m[f"activations_{dt}"] <= sram]
            print(f"    {dev} {dt}: weights in flash {'fit' if fits[0] else 'do not fit'}, "
                  f"activations in SRAM {'fit' if fits[1] else 'do not fit'}")

# %% [markdown]
# The two budgets are about different things: flash about the weights, SRAM about the
# activations. Fewer bytes per weight therefore do nothing for SRAM; fewer bytes per activation
# value, or fewer channels where the picture is still large (the peak's layer is printed above),
# do. The rest of the workbook closes the gap step by step, checking at each step what it costs
# in accuracy.
#
# ## Save this run's records
#
# Each notebook writes its records to `build/results/<notebook>.json`; `make run` gathers them into
# `build/results.json`.

# %%
path = report.write_notebook_results(NOTEBOOK, records, smoke=SMOKE, seed_claims=seed_claims,
                                     verdicts={"memory": memory_rows})
print(f"wrote {len(records)} records to {path.relative_to(path.parents[2])}")

# %% [markdown]
# **Next:** [01 · Pruning](01_pruning.ipynb) removes weights and whole channels from this teacher
# and measures what that really buys.
