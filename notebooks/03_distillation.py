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
# # 03 · Distillation: does a small student learn more from a teacher than from labels?
#
# The blog post behind this workbook trains a small ResNet to copy the teacher's outputs and calls
# the result "an efficient compressed model". It never trains the same student without the teacher,
# so it cannot tell whether the teacher helped. This notebook builds the distillation loss properly,
# tests what the blog's loop leaves out, and then runs the fair experiment: the same student, data,
# epochs, optimizer and seeds, with and without the teacher.
#
# **You will learn**
# - what the temperature T does to a softmax, why the soft term is multiplied by T², and what α mixes;
# - to write the distillation loss yourself (and have it checked);
# - to read a result over several seeds: a mean, a spread, and whether the gain is larger than the spread;
# - how small the student gets once it is int8 as well.

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "03_distillation"

# %%
import statistics

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display

from edgelab import (check, data, distill, figures, loop, measure, models, prune, quantize, report,
                     runtime, stats, train, widgets)
from edgelab import counts, evaluation, latency, memory, plots, tables
from edgelab.records import find
from edgelab import cache

memory.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

EVAL_IMAGES = 500 if SMOKE else None     # accuracy claims: the full 10k test set at defaults
LIVE_IMAGES = 1024 if SMOKE else 6400    # training images for each short live run (one pass)
VAL_IMAGES = 500 if SMOKE else 2000      # validation images that compare the live runs
LATENCY_S = 0.2 if SMOKE else 1.0        # seconds of timing per latency figure
SEEDS = [s for s in range(5)                    # the seeds shipped for both recipes (five)
         if {f"student-kd-s{s}", f"student-scratch-s{s}"} <= set(models.SHIPPED_SHA256)]

teacher = models.load_checkpoint("teacher")
records = [measure.measure(teacher, "teacher", tags=["fp32", "baseline"], limit=EVAL_IMAGES,
                           min_run_time=LATENCY_S)]
print(f"teacher: {100 * records[0]['accuracy']:.2f} % on {records[0]['test_images']} test images")

# %%
# NBVAL_CHECK_OUTPUT
student = models.student()
print(f"teacher: {counts.count_params(teacher):>10,} parameters {counts.count_macs(teacher):>13,} MACs")
print(f"student: {counts.count_params(student):>10,} parameters {counts.count_macs(student):>13,} MACs")
print(f"the student has {counts.count_params(teacher) / counts.count_params(student):.0f}x fewer "
      f"parameters and needs {counts.count_macs(teacher) / counts.count_macs(student):.0f}x fewer MACs")

# %% [markdown]
# ### The blog's `SmallResNet`, run
#
# The blog's student is a `SmallResNet` whose `_make_layer(in_channels, out_channels, blocks)`
# appends `blocks` times the same `Conv2d(in_channels, out_channels)` + BN + ReLU, never updating
# `in_channels`. Its stem takes 3 channels and its head has `num_classes=1000`. The cell re-types
# the lines that matter and runs them on real test images.

# %%
import torch.nn as nn


def blog_make_layer(in_channels, out_channels, blocks):   # the blog's loop, re-typed
    layers = []
    for _ in range(blocks):
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False))
        layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


blog_stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                          nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
x_real = data.tensors("test", limit=8)[0]
blog_errors = {}
with torch.no_grad():
    try:
        blog_stem(x_real)
    except RuntimeError as e:
        blog_errors["grayscale input"] = str(e).splitlines()[0]
    h = blog_stem(x_real.repeat(1, 3, 1, 1))   # give it the 3 channels it wants
    h = blog_make_layer(16, 16, 2)(h)           # layer1: 16 -> 16 -> 16, fine
    try:
        blog_make_layer(16, 32, 2)(h)           # layer2: 16 -> 32, then 16 -> 32 again
    except RuntimeError as e:
        blog_errors["layer2"] = str(e).splitlines()[0]
for where, err in blog_errors.items():
    print(f"{where}: RuntimeError: {err}")
print("skip connections in the blog's blocks: none (each block is Conv-BN-ReLU, nothing added back); "
      "its head: Linear(32, 1000)")
blocks = [m for m in student.modules() if type(m).__name__ == "BasicBlock"]
with torch.no_grad():
    out_shape = tuple(student.eval()(x_real).shape)
print(f"the workbook's Student on the same 1x28x28 images: logits {out_shape}, "
      f"{counts.count_params(student):,} parameters, {len(blocks)} residual blocks "
      f"({sum(b.downsample is not None for b in blocks)} with a 1x1 projection on the shortcut)")
seed_claims = {"5": report.seed_claim(
    "the blog's SmallResNet stem and _make_layer(16, 32, 2) loop re-typed, on 8 real test images",
    {"errors": blog_errors, "num_classes": 1000, "residual": False})}

# %% [markdown]
# The second conv of `layer2` receives the 32 channels the first one made but was built for 16,
# so the blog's student cannot run at all, on any input; its stem also expects colour images, and
# its blocks have no skip connection, so "ResNet" is only in the name. The workbook's `Student`
# (`edgelab.models.Student`) is the idea done right: real residual blocks whose channels match,
# one input channel, ten classes.

# %% [markdown]
# ## 1 · The loss
#
# A classifier's softmax turns logits `z` into probabilities. Dividing the logits by a temperature
# `T` before the softmax, `softmax(z / T)`, flattens the distribution: at T = 1 a confident teacher
# puts almost everything on one class, and the small probabilities it gives the other nine (which of
# them look a bit like this image) are invisible. At higher T they become visible, and that is what a
# student can learn from beyond the label.

# %%
x_few, y_few = data.tensors("test", limit=8)
with torch.no_grad():
    z = teacher(x_few[:1])[0]
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.4))
for k, T in enumerate([1, 4, 10]):
    ax.bar([i + 0.27 * (k - 1) for i in range(10)], distill.soften(z, T), 0.27, label=f"T = {T}")
ax.set_xticks(range(10), data.CLASSES, rotation=30, ha="right", fontsize=9)
ax.set_ylabel("teacher's probability")
top = [distill.soften(z, T).max().item() for T in (1, 10)]
ax.set_title(f"One {data.CLASSES[y_few[0]]}: the top probability falls from {top[0]:.2f} at T = 1 "
             f"to {top[1]:.2f} at T = 10")
ax.legend(loc="upper right")
figures.show(fig)
for T in (1, 4, 10):
    p = distill.soften(z, T)
    print(f"T = {T:>2}: top class {p.max():.3f}, the other nine {1 - p.max():.2e} together")


# %% [markdown]
# The distillation loss (Hinton et al., 2015) mixes a soft term and a hard term:
#
#     loss = α · T² · KL( softmax(teacher / T) ‖ softmax(student / T) )  +  (1 − α) · CE(student, labels)
#
# - **T² factor**: softening divides the soft term's gradients by about T², so multiplying by T²
#   keeps its weight the same whatever T you pick.
# - **α**: how much the student listens to the teacher (1) or to the labels (0).
# - **the teacher is frozen**: evaluated in `eval()` mode (batch norms use their running statistics)
#   under `torch.no_grad()`, and its logits are detached. Here they are computed once for every
#   training image, plain and mirrored, and cached on disk keyed by the checkpoint's sha256
#   (`distill.teacher_logits`).
#
# ### Your turn
#
# Write the loss. `check.kd_loss` runs it on small fixed logits: T = 1 must equal the KL divergence
# of the plain softmaxes, the soft term must scale with T², α = 0 must give the plain cross-entropy,
# and no gradient may reach the teacher.

# %%
def my_kd_loss(student_logits, teacher_logits, labels, T, alpha):
    # 1. soft term: F.kl_div(log-probabilities of the student at T, probabilities of the teacher
    #    at T, reduction="batchmean"), times T * T; detach the teacher's logits
    # 2. hard term: F.cross_entropy(student_logits, labels)   (no T here)
    # 3. return alpha * soft + (1 - alpha) * hard
    raise NotImplementedError

kd_loss = check.kd_loss(my_kd_loss)

# %% [markdown]
# ## 2 · Temperature and α, live
#
# The panel below works on eight test images whose logits were computed once, for the teacher and
# for a shipped distilled student. Move T and watch both distributions flatten; move α and watch
# the mix of the two loss terms change; pick another image from the list.

# %%
shown = models.load_checkpoint("student-kd-s0")
with torch.no_grad():
    teacher_few, student_few = teacher(x_few), shown(x_few)
panel = widgets.distill_panel(teacher_few, student_few, y_few, data.CLASSES)
panel

# %% [markdown]
# Nobody moves a slider when this notebook runs headless, so the next cell moves T and α the way a
# learner would and records how long each move took to answer:

# %%
slider = panel.timing(last=len(panel.sweep("T", [1.0, 2.0, 4.0, 8.0, 16.0])))
alpha_timing = panel.timing(last=len(panel.sweep("alpha", [0.0, 0.5, 1.0])))
panel.set(T=4.0, alpha=0.9)
print(f"median response per move: T {slider['median_s'] * 1000:.0f} ms, "
      f"alpha {alpha_timing['median_s'] * 1000:.0f} ms")

# %% [markdown]
# ## 3 · What the blog's loop leaves out, measured
#
# The blog's loop trains its student with Adam (lr 1e-3) on the KL divergence between plain
# softmaxes (T = 1), never looks at a label, and feeds the same `input_data` tensor at every step.
# Its teacher is the *compressed* one: 50 % of each layer's weights zeroed by magnitude, then
# `quantize_dynamic` (fp32 convolutions and an int8 classifier, as 02 shows). Below, short runs
# start from the same `Student` weights (the blog's own student cannot run, as shown above) and see
# the same training images in the same order; each run changes one thing from the one above it.

# %%
live_logits = distill.teacher_logits("teacher", "train", limit=LIVE_IMAGES)
val_x, val_y = data.tensors("val", limit=VAL_IMAGES)
T = train.RECIPES["student-kd"]["distill"]["T"]
ALPHA = train.RECIPES["student-kd"]["distill"]["alpha"]
SEED = 0

# the blog's teacher: prune_model(model, 0.5) (each layer at 50 %), then quantize_dynamic
blog_teacher = quantize.dynamic(prune.remove_masks(prune.unstructured(teacher, 0.5, scope="layer")),
                                {nn.Linear, nn.Conv2d})
train_x, _ = data.tensors("train", limit=LIVE_IMAGES)
blog_logits = torch.stack([evaluation.predict_logits(blog_teacher, train_x),
                           evaluation.predict_logits(blog_teacher, train_x.flip(-1))], dim=1)
print(f"the blog's teacher on {VAL_IMAGES} validation images: "
      f"{100 * evaluation.accuracy_on(blog_teacher, val_x, val_y):.1f} % "
      f"(the teacher: {100 * evaluation.accuracy_on(teacher, val_x, val_y):.1f} %)")
del blog_teacher, train_x


def live_run(loss_fn, logits, optimizer="sgd", one_batch=False, seed=SEED):
    """One pass over LIVE_IMAGES training images: the recipe's SGD + one-cycle, or the blog's Adam."""
    torch.manual_seed(seed)
    model = models.student()
    batches = distill.DistillBatches(
        data.loader("train", 128, flip=True, limit=LIVE_IMAGES, seed=seed), logits)
    if one_batch:  # the blog's loop: one fixed batch, every step
        batches = [next(iter(batches))] * len(batches)
    if optimizer == "sgd":
        train.fit(model, batches, epochs=1, lr=0.1, loss_fn=loss_fn, progress=False)
    else:   # the blog's optimizer: Adam at a constant rate, no schedule, in the same one loop
        loop.run(model, batches, torch.optim.Adam(model.parameters(), lr=1e-3), epochs=1,
                 loss_fn=loss_fn)
    return model.eval()


blog_loss = lambda s, t: distill.seed_loss(s, t[1])   # noqa: E731  KL(softmax), T = 1, no labels
variants = {   # name: (loss, teacher logits, optimizer, one fixed batch)
    "the blog's loop: Adam, T = 1, no labels, compressed teacher, one batch":
        (blog_loss, blog_logits, "adam", True),
    "+ real data (a new batch each step)": (blog_loss, blog_logits, "adam", False),
    "+ the fp32 teacher": (blog_loss, live_logits, "adam", False),
    f"+ temperature T = {T:g}": (distill.loss_fn(T, 1.0), live_logits, "adam", False),
    f"+ labels, alpha = {ALPHA:g}": (distill.loss_fn(T, ALPHA), live_logits, "adam", False),
    "+ SGD with one-cycle (the recipe)": (distill.loss_fn(T, ALPHA), live_logits, "sgd", False),
    "labels only, no teacher (SGD)": (lambda s, t: F.cross_entropy(s, t[0]), live_logits, "sgd", False),
}
live = {}
for name, (loss, logits, opt_name, one_batch) in variants.items():
    live[name] = evaluation.accuracy_on(live_run(loss, logits, opt_name, one_batch), val_x, val_y)
    print(f"{100 * live[name]:5.1f} %  {name}")
print(f"(each: seed {SEED}, one pass over {LIVE_IMAGES} training images in batches of 128; "
      f"accuracy on {len(val_y)} validation images)")

# %%
import textwrap

fig, ax = plt.subplots(figsize=(figures.WIDTH, 4.2))
names = list(live)[::-1]
ax.barh([textwrap.fill(n, 40) for n in names], [100 * live[n] for n in names],
        xerr=[100 * figures.accuracy_se(live[n], len(val_y)) for n in names], capsize=3)
ax.set_xlabel(f"accuracy (%), {len(val_y):,} val. images, ±1 SE")
fig.suptitle(f"One pass over {LIVE_IMAGES:,} training images (seed {SEED}): best is\n"
             f"{max(live, key=live.get)}")
figures.show(fig)
steps = list(live.values())
print("each change, in points: " + ", ".join(
    f"{name.split(' (')[0].lstrip('+ ')} {100 * (b - a):+.1f}"
    for name, a, b in zip(list(live)[1:6], steps[:5], steps[1:6])))
seed_claims["6"] = report.seed_claim(
    "the blog's KD loop (Adam 1e-3, KL of plain softmaxes, no labels, one fixed batch, 50 %-pruned "
    "+ dynamic-int8 teacher) on the workbook's Student, then one repair at a time",
    {"images": LIVE_IMAGES, "seed": SEED, "val_images": len(val_y),
     "val_accuracy": {name: acc for name, acc in live.items()}})

# %% [markdown]
# The first bar against the second is what training on one fixed batch costs: the student only ever
# sees those 128 images. The next ones are what the uncompressed teacher, the temperature, the
# labels and the recipe's optimizer add, each on top of the others. A single short run on one seed
# cannot separate an effect of a point or less from noise; that is what the next section is for.

# %% [markdown]
# ## 4 · The fair experiment
#
# Two recipes in `edgelab.train` differ only in the loss: `student-scratch` learns from the labels,
# `student-kd` from the teacher and the labels (T and α as above). Same architecture, data, flips,
# epochs, optimizer, learning-rate schedule and seeds: seed *s* gives both the same initial weights
# and the same batches. Each seed's students were trained by
#
#     python -m edgelab.train student-scratch --seed 0 1 2 3 4
#     python -m edgelab.train student-kd --seed 0 1 2 3 4
#
# and ship as checkpoints with their cards. The full runs take longer than this notebook's budget,
# so they ship; section 3 was the short live run of the same recipe. Every shipped student is
# measured again here, in this run:

# %%
for recipe in ("student-scratch", "student-kd"):
    print(recipe, {k: v for k, v in train.RECIPES[recipe].items() if k != "per_seed"})

students = {}
for recipe in ("student-scratch", "student-kd"):
    for seed in SEEDS:
        name = f"{recipe}-s{seed}"
        students[name] = models.load_checkpoint(name)
        card = models.read_card(name)
        records.append(measure.measure(students[name], name,
                                       tags=["student", recipe.split("-")[1], f"seed{seed}"],
                                       limit=EVAL_IMAGES, batch_sizes=()))
        print(f"{name:18s} {100 * records[-1]['accuracy']:.2f} % on {records[-1]['test_images']} "
              f"test images (its card: {100 * card['test_accuracy']:.2f} % on 10000; trained "
              f"{card['epochs']} epochs in {card['wall_time_s'] / 60:.0f} min)")

# %% [markdown]
# All ten students have the same architecture, so they must take the same time; measured one
# after another, a slow spell of the machine can make one recipe look slower. Their latencies are
# therefore measured **interleaved**: after a warm-up, each round times every student once, and
# each one's figure is the median of its rounds (`latency.remeasure_latency`). The table shows the
# spread of the rounds beside each median.

# %%
# ten students of one small architecture: half the timing budget each keeps the notebook in its
# five minutes, and the rounds' spread (in the table) shows whether that was enough
latency.remeasure_latency(records, students, min_run_time=LATENCY_S / 2)
lat = [find(records, n)["latency_b1_ms"] for n in students]
print(f"batch-1 latency of the ten students: {min(lat):.3f} to {max(lat):.3f} ms "
      f"({100 * (max(lat) / min(lat) - 1):.0f} % apart)")

# %%
acc = {r: [100 * find(records, f"{r}-s{s}")["accuracy"] for s in SEEDS]
       for r in ("student-scratch", "student-kd")}
for recipe, a in acc.items():
    print(f"{recipe:16s} {statistics.mean(a):.2f} % ± {statistics.stdev(a):.2f} "
          f"(mean ± sd over {len(a)} seeds; min {min(a):.2f}, max {max(a):.2f})")
val_acc = {r: [100 * models.read_card(f"{r}-s{s}")["val_accuracy"] for s in SEEDS]
           for r in acc}
for recipe, a in val_acc.items():
    print(f"{recipe:16s} {statistics.mean(a):.2f} % mean on the {data.VAL_SIZE} validation images "
          "(from the cards)")
verdict = {}
for split, values in (("test", acc), ("validation", val_acc)):
    c = stats.paired_comparison(values["student-kd"], values["student-scratch"])
    verdict[split] = c
    print(f"\ngain from distillation on {split}, paired by seed: {c['mean']:+.2f} pt "
          f"(per seed: {', '.join(f'{g:+.2f}' for g in c['diffs'])})\n"
          f"  95 % confidence interval of the mean gain: [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] pt\n"
          f"  paired t-test: t = {c['t']:.2f}, {c['df']} degrees of freedom, p = {c['p_t']:.3f}\n"
          f"  exact permutation test (all {2 ** c['n']} sign flips): p = {c['p_perm']:.3f} "
          f"(the smallest p {c['n']} seeds can give: {c['p_perm_min']:.4f})")
c = verdict["test"]
if c["ci"][0] > 0:
    print("→ distillation helped: the whole 95 % interval of the gain is above zero.")
elif c["ci"][1] < 0:
    print("→ distillation hurt: the whole 95 % interval of the gain is below zero.")
else:
    print("→ not shown: the 95 % interval of the gain includes zero.")
seed_gain = {"seeds": SEEDS, "test": {k: v for k, v in verdict["test"].items() if k != "diffs"},
             "validation_mean_gain": verdict["validation"]["mean"]}

fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.6))
for k, (recipe, a) in enumerate(acc.items()):
    ax.scatter([k - 0.12] * len(a), a, s=22, alpha=0.6, zorder=3, color=figures.PALETTE[k],
               label=f"{recipe}: one dot a seed")
    ax.errorbar(k + 0.12, statistics.mean(a), yerr=statistics.stdev(a) / len(a) ** 0.5,
                marker="D", color=figures.PALETTE[k], capsize=4, ms=7, zorder=4)
teacher_acc, n_test = records[0]["accuracy"], records[0]["test_images"]
se = 100 * figures.accuracy_se(teacher_acc, n_test)
ax.axhspan(100 * teacher_acc - se, 100 * teacher_acc + se, color="0.88", label="teacher ±1 SE")
ax.set_xticks([0, 1], [f"{r}\n(◆: mean ±1 SE)" for r in acc])
ax.set_xlim(-0.6, 1.6)
ax.set_ylabel(f"test accuracy (%)\n{n_test:,} images")
ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), borderaxespad=0)
lo, hi = c["ci"]
ax.set_title(f"Distillation's gain over {len(SEEDS)} paired seeds: {c['mean']:+.2f} points, "
             f"95 % CI [{lo:+.2f}, {hi:+.2f}]")
figures.show(fig)

# %% [markdown]
# Read the verdict line above, not the blog: it comes from this run. What a few paired seeds can
# and cannot say: if the interval lies above zero, distillation helped this student by about that
# much; if it includes zero, the experiment did not show a gain, which is not the same as showing
# there is none (a gain smaller than the seed-to-seed noise needs more seeds to see). The
# permutation test makes no assumption about the shape of the noise, but with so few seeds it
# cannot go below the smallest p printed above; the t-test assumes roughly normal differences.

# %% [markdown]
# ### A second signal: the teacher's feature maps (FitNets)
#
# The logits are not all a teacher knows. FitNets ([Romero et al., 2015](https://arxiv.org/abs/1412.6550))
# also makes an intermediate feature map of the student regress one of the teacher's. The claim
# tested here: adding such a *hint* to the distillation loss gives a better student than the
# logits alone, at the same training budget. The recipe `student-fitnets` is `student-kd` (the
# same epochs, optimizer, schedule, T, α and seeds) plus β times the mean squared error between
# the student's middle stage (`stages.1`, 32 channels at 14×14) and the teacher's `layer1`
# (64 channels at 14×14, the only teacher stage of that size), through a 1×1 convolution that
# maps the student's channels to the teacher's. That adapter is trained with the student and
# thrown away afterwards: the shipped checkpoint is the plain `Student` (`distill.FeatureHint`).
# The teacher runs on every batch, up to `layer1` only, since cached logits cannot give a
# feature map; each seed was trained by
#
#     python -m edgelab.train student-fitnets --seed 0 1 2 3 4
#
# The test is the one above: paired by seed, a mean difference with its 95 % interval.

# %%
hint_recipe = train.RECIPES["student-fitnets"]
print("student-fitnets adds to student-kd:", {k: v for k, v in hint_recipe.items()
                                              if train.RECIPES["student-kd"].get(k) != v})
FIT_SEEDS = [s for s in SEEDS if f"student-fitnets-s{s}" in models.SHIPPED_SHA256]
missing = [f"student-fitnets-s{s}" for s in SEEDS if s not in FIT_SEEDS]
fitnets_verdict = None
if len(FIT_SEEDS) < 2:
    print(f"skipped: a paired comparison needs at least 2 seeds; not shipped yet: {missing}")
else:
    if missing:
        print(f"{len(FIT_SEEDS)} of the {len(SEEDS)} seeds shipped; not shipped: {missing}")
    VAL_LIMIT = 500 if SMOKE else None
    hint_acc = {"student-kd": {}, "student-fitnets": {}}   # split -> accuracies by seed, in %
    print(f"{'student':20s} {'test %':>7s} {'val. %':>7s}   card: test, val., wall time")
    for recipe in hint_acc:
        tests, vals = [], []
        for seed in FIT_SEEDS:
            name = f"{recipe}-s{seed}"
            card = models.read_card(name)
            model = students[name] if name in students else models.load_checkpoint(name)
            tests.append(100 * (find(records, name)["accuracy"] if recipe == "student-kd" else
                                evaluation.correct_mask(model, EVAL_IMAGES).float().mean().item()))
            vals.append(100 * evaluation.correct_mask(model, VAL_LIMIT, "val").float().mean().item())
            print(f"{name:20s} {tests[-1]:7.2f} {vals[-1]:7.2f}   {100 * card['test_accuracy']:.2f}, "
                  f"{100 * card['val_accuracy']:.2f}, {card['wall_time_s'] / 60:.0f} min "
                  f"on {card['threads']} thread(s)")
        hint_acc[recipe] = {"test": tests, "validation": vals}
    n_test = EVAL_IMAGES or 10000
    n_val = VAL_LIMIT or data.VAL_SIZE
    hint_cmp = {}
    for split, n in (("test", n_test), ("validation", n_val)):
        c = stats.paired_comparison(hint_acc["student-fitnets"][split], hint_acc["student-kd"][split])
        hint_cmp[split] = c
        print(f"\nfeature hint minus logits only, {split} ({n:,} images), paired over seeds {FIT_SEEDS}: "
              f"{c['mean']:+.2f} pt (per seed: {', '.join(f'{g:+.2f}' for g in c['diffs'])})\n"
              f"  95 % confidence interval: [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] pt; paired t-test "
              f"p = {c['p_t']:.3f}; exact permutation p = {c['p_perm']:.3f} (smallest possible "
              f"{c['p_perm_min']:.4f})")
    for split, c in hint_cmp.items():
        if c["ci"][0] > 0:
            print(f"→ {split}: the hint helped; the whole 95 % interval is above zero.")
        elif c["ci"][1] < 0:
            print(f"→ {split}: the hint hurt; the whole 95 % interval is below zero.")
        else:
            print(f"→ {split}: not shown; the 95 % interval includes zero, so these seeds cannot "
                  "tell the hint from logit-only distillation.")
    fitnets_verdict = {"seeds": FIT_SEEDS, **{
        split: {k: v for k, v in cmp.items() if k != "diffs"} for split, cmp in hint_cmp.items()}}

    fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.6))
    kd_t, fit_t = hint_acc["student-kd"]["test"], hint_acc["student-fitnets"]["test"]
    for seed, a, b in zip(FIT_SEEDS, kd_t, fit_t):
        ax.plot([0, 1], [a, b], color="0.6", lw=1, marker="o", ms=4, zorder=2)
    for k, a in enumerate((kd_t, fit_t)):
        ax.errorbar(k + 0.08, statistics.mean(a), yerr=statistics.stdev(a) / len(a) ** 0.5,
                    marker="D", color=figures.PALETTE[k + 1], capsize=4, ms=7, zorder=4)
    ax.set_xticks([0, 1], ["student-kd\n(logits)", "student-fitnets\n(logits + hint)"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel(f"test accuracy (%)\n{n_test:,} images")
    t_c = hint_cmp["test"]
    ax.set_title(f"The hint's difference over {len(FIT_SEEDS)} paired seeds (one line each; ◆ mean "
                 f"±1 SE):\n{t_c['mean']:+.2f} points, 95 % CI [{t_c['ci'][0]:+.2f}, {t_c['ci'][1]:+.2f}]")
    figures.show(fig)

# %% [markdown]
# The verdict lines are printed from this run's numbers, one per split; if the two disagree, the
# validation one is the one a choice of recipe may rest on (the test set is kept for reporting).
# A hint adds a second target; it only pays if that target carries something the logits do not
# already give this small student, and a few seeds can only show a difference larger than the
# seed-to-seed noise: an interval that includes zero is "not shown", not "no difference".
#
# ## 5 · The student in int8
#
# The student already has far fewer parameters than the teacher (the counts at the top). Stored in
# one byte per weight (ONNX Runtime static quantization, as in 02) it shrinks again, by the factor
# printed below. The distilled student that ships is the one with the best *validation* accuracy
# (from the cards), and the best scratch student, chosen the same way, goes beside it; choosing on
# the test set would flatter both.

# %%
def best_on_val(recipe):
    names = [n for n in students if n.startswith(f"student-{recipe}-")]
    return max(names, key=lambda n: models.read_card(n)["val_accuracy"])


t = records[0]
int8_sessions = {}
for recipe in ("kd", "scratch"):
    name = best_on_val(recipe)
    # files keyed by what made them: the checkpoint's hash, the input shape, the calibration
    sha, calib_n = models.read_card(name)["sha256"], 256 if SMOKE else 512
    fp32_onnx = runtime.export_onnx(students[name], cache.path(
        f"{NOTEBOOK}/{name}", [sha, val_x.shape[1:]], ".onnx"), val_x[:2])
    int8_onnx = runtime.ort_static(fp32_onnx, cache.path(
        f"{NOTEBOOK}/{name}-int8", [fp32_onnx.name, "minmax", calib_n], ".onnx"),
        data.calibration_set(calib_n))
    int8_sessions[f"{name}-int8"] = runtime.session(int8_onnx)   # timed again below
    s8 = measure.measure_onnx(int8_onnx, f"{name}-int8", students[name],
                              session=int8_sessions[f"{name}-int8"],
                              tags=["student", "int8", recipe], limit=EVAL_IMAGES, batch_sizes=())
    s8.selected_on = "val"
    records.append(s8)
    print(f"{name} (best {recipe} student on validation, "
          f"{100 * models.read_card(name)['val_accuracy']:.2f} %), int8 in ONNX Runtime: "
          f"{s8['bytes']:,} bytes, {fp32_onnx.stat().st_size / s8['bytes']:.1f}x smaller than its "
          f"fp32 .onnx and {t['bytes'] / s8['bytes']:.0f}x smaller than the fp32 teacher; test "
          f"accuracy {100 * s8['accuracy']:.2f} % ({100 * (t['accuracy'] - s8['accuracy']):.2f} pt "
          "below the teacher)")
best = best_on_val("kd")
latency.remeasure_latency(records, int8_sessions, min_run_time=LATENCY_S)  # the two int8 together

# %%
display(tables.table(records, bars={"×smaller": 100}))   # the best int8 student's bar
t = find(records, "teacher")
small = min((r for r in records if r["name"].startswith("student")), key=lambda r: r["bytes"])
fig = plots.cost_figure(records, title=f"Students: {t['bytes'] / small['bytes']:.0f}x fewer bytes "
                                        "than the teacher, seeds pooled (faint dots)")
figures.show(fig)

# %%
t, s8 = records[0], find(records, f"{best}-int8")
bars = [
    ("best student, int8: >= 100x smaller than the fp32 teacher", t["bytes"] / s8["bytes"],
     t["bytes"] / s8["bytes"] >= 100),
    ("best student, int8: within 3 pt of the teacher", 100 * (t["accuracy"] - s8["accuracy"]),
     t["accuracy"] - s8["accuracy"] <= 0.03),
    ("seeds per recipe >= 3", len(SEEDS), len(SEEDS) >= 3),
    ("slider median response <= 1 s", slider["median_s"], slider["median_s"] <= 1.0),
]
for what, value, ok in bars:
    print(f"{'met   ' if ok else 'MISSED'}  {what}: {value:.2f}")
if SMOKE:
    print("(smoke mode: small sizes, these figures are not the claims)")
path = report.write_notebook_results(NOTEBOOK, records, widgets={"distill_slider": slider},
                                     smoke=SMOKE, seed_claims=seed_claims,
                                     verdicts={"distillation_gain": seed_gain,
                                               "fitnets_vs_kd": fitnets_verdict})

# %% [markdown]
# **What it means.** Distillation is a training recipe, not a compression method: the compression
# comes from choosing a small student, and the teacher can only help it train. Whether it helped
# here is the verdict line in section 4, tested over the paired seeds. The int8 student is the smallest
# model in the workbook.
#
# **Next:** [04 · Low rank](04_low_rank.ipynb) keeps the teacher's architecture and factors its layers.
