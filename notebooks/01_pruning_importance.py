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
# # 01 · Pruning, continued: which channels, and when
#
# [01 · Pruning](01_pruning.ipynb) removed channels by the L2 norm of their filters, all at once.
# Two choices hide in that sentence: the **importance** that ranks the channels, and the
# **schedule** that removes them. This notebook changes one at a time and measures the result, on
# the distilled student of [03](03_distillation.ipynb) (`student-kd-s0`) rather than the
# teacher: with few channels to spare, which ones go matters more, and a difference can show
# within the few hundred fine-tune steps a notebook affords (the teacher recovers from almost any
# cut in that time, leaving only noise to compare).
#
# **You will learn**
# - three importances torch-pruning ships: the L2 magnitude of a channel's weights, the
#   first-order Taylor score Σ |w · ∂L/∂w| (you write it for one layer, checked against
#   autograd), and the batch norm's |γ|;
# - one-shot against iterative pruning (`iterative_steps`: small steps, each followed by a
#   short fine-tune), at the same final channel budget and the same number of fine-tune steps;
# - how to read such a comparison: choose on validation, confirm on test, and call a difference
#   real only beyond its paired standard error.
#
# **Time:** about 2–4 minutes at the defaults on 2 cores (the speed cell estimates it for yours);
# under a minute in smoke mode.

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "01_pruning_importance"

# %%
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import display
from tqdm.auto import tqdm

from edgelab import check, counts, data, figures, measure, memory, models, prune, prune_schedule
from edgelab import report, tables
from edgelab.records import find

memory.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

RATE = 0.5                             # of every layer's channels, the classifier kept whole
STEPS = 4 if SMOKE else 320            # fine-tune steps per method, every method the same
LR = 0.02                              # SGD + momentum, decaying linearly to 0 over STEPS
BATCH = 64
SEED = 1                               # the fine-tune's batch order: the same for every method
GRAD_BATCHES = 1 if SMOKE else 4       # batches of 128 whose gradient Taylor importance reads
EVAL_IMAGES = 300 if SMOKE else None   # test images: the full 10k at defaults
VAL_IMAGES = 300 if SMOKE else data.VAL_SIZE

torch.manual_seed(0)
student = models.load_checkpoint("student-kd-s0")
records = [measure.measure(student, "student", tags=["baseline"], limit=EVAL_IMAGES,
                           batch_sizes=(), val=VAL_IMAGES)]
display(tables.table(records, baseline="student"))

# %% [markdown]
# ## 1 · The budget, and what it costs to fine-tune
#
# Every method ends at the same widths: `RATE` of each layer's channels removed (torch-pruning
# keeps `int(C · (1 − RATE))` of `C`), so the same parameters and MACs, and every method gets the
# same `STEPS` SGD steps on the same batches. The budget, then the time of one step (a batch of
# 64) before and after pruning on this machine, which sets how many steps a notebook can afford.
# On the student that is enough for differences of a few standard errors (section 4), so these
# fine-tunes run live here instead of shipping as checkpoints made by a command, as 01's
# full-length recovery of the teacher does:

# %%
# NBVAL_CHECK_OUTPUT
thin = prune.structured(student, RATE, torch.zeros(1, *data.INPUT_SHAPE))
before, after = prune_schedule.widths(student), prune_schedule.widths(thin)
print(f"widths {sorted(set(before.values()) - {10})} -> {sorted(set(after.values()) - {10})} "
      f"(the classifier keeps its {after['fc']} outputs)")
print(f"parameters {counts.count_params(student):,} -> {counts.count_params(thin):,}; "
      f"MACs {counts.count_macs(student):,} -> {counts.count_macs(thin):,}")

# %%
speed = {"unpruned": prune_schedule.seconds_per_step(student, 2 if SMOKE else 10, BATCH),
         "pruned": prune_schedule.seconds_per_step(thin, 2 if SMOKE else 10, BATCH)}
n = len(prune_schedule.METHODS)
# one-shot runs at the pruned width; the iterative runs pass through the widths in between
estimate = STEPS * n * (speed["unpruned"] + speed["pruned"]) / 2
print(f"one step: {1e3 * speed['unpruned']:.0f} ms unpruned, {1e3 * speed['pruned']:.0f} ms at "
      f"{RATE:.0%} of the channels removed")
print(f"{n} methods x {STEPS} steps: about {estimate:.0f} s of fine-tuning on this machine")
del thin

# %% [markdown]
# ## 2 · Three importances
#
# Inside each dependency group (the channels that residual sums and batch norms tie together),
# torch-pruning ranks channels by an importance and removes the lowest:
#
# - **L2 magnitude** (`tp.importance.MagnitudeImportance(p=2)`): the norm of the channel's
#   weights. Cheap, and blind to what the channel does for the loss.
# - **Taylor** (`tp.importance.TaylorImportance()`, Molchanov et al., CVPR 2019,
#   [paper](https://openaccess.thecvf.com/content_CVPR_2019/papers/Molchanov_Importance_Estimation_for_Neural_Network_Pruning_CVPR_2019_paper.pdf)):
#   setting a weight w to zero changes the loss by about −w · ∂L/∂w (a first-order Taylor
#   expansion), so a channel's score is Σ |w · ∂L/∂w| over its weights. It needs a gradient:
#   a few training batches' loss, back-propagated, before each pruning step.
# - **BN-γ** (`tp.importance.BNScaleImportance()`, "network slimming", Liu et al., ICCV 2017,
#   [arXiv:1708.06519](https://arxiv.org/abs/1708.06519)): the |γ| of the batch norm after the
#   convolution, the scale the channel leaves the batch norm with.
#
# ### Your turn: the Taylor score of one layer
#
# Write `my_taylor_scores(weight, grad)`: for a conv weight of shape (out, in, k, k) and its
# gradient ∂L/∂w (same shape), return one score per **output** channel, Σ |w · ∂L/∂w| over that
# channel's in · k · k weights, the absolute value taken per weight before the sum (torch-pruning's
# default, `multivariable=False`). The checker computes gradients with autograd on tiny fixed
# layers and tells you what is off. Skip it and the notebook uses the reference.

# %%
def my_taylor_scores(weight, grad):
    # Hint: weight * grad is one product per weight; which dimensions belong to one output channel?
    raise NotImplementedError

taylor_scores = check.taylor_scores(my_taylor_scores)

# %% [markdown]
# Your function on the real student: the gradient of the loss on `GRAD_BATCHES` training batches,
# the scores of the first convolution of stage 2 (`stages.1.0.conv1`, whose output channels
# only its own block reads), against torch-pruning's `TaylorImportance` on that layer's weights
# alone and on the whole group the pruner ranks: the layer, its batch norm's γ and the next
# convolution's input weights.

# %%
grad_batches = prune_schedule.fixed_batches(GRAD_BATCHES)
work = prune.clone(student)
prune_schedule.accumulate_gradients(work, grad_batches)
layer = work.stages[1][0].conv1
mine = taylor_scores(layer.weight, layer.weight.grad)
own, group = prune_schedule.layer_scores(work, layer, "taylor")
keep = int(layer.out_channels * (1 - RATE))
rho, shared = prune_schedule.rank_agreement(mine, group, keep)
gap = float((mine - own).abs().max() / own.abs().max())
print(f"your scores against TaylorImportance on this layer's weights alone: largest difference "
      f"{gap:.1e} of the largest score")
print(f"against the group's score the pruner uses: Spearman {rho:.2f}; of the {keep} channels "
      f"each keeps, {shared} are the same")

fig, ax = plt.subplots(figsize=(figures.WIDTH, 3))
order = group.argsort(descending=True)
x = range(len(order))
ax.bar(x, (group / group.sum())[order], color="0.75", label="torch-pruning, whole group")
ax.plot(x, (mine / mine.sum())[order], "o", color="C0", label="yours, this layer alone")
ax.axvline(keep - 0.5, color="k", ls="--", lw=1)
ax.set_xlabel(f"channel of stages.1.0.conv1, by the group's score (left of the line: kept at {RATE:.0%})")
ax.set_ylabel("share of the layer's score")
ax.legend(loc="upper right")
ax.set_title(f"Yours and torch-pruning's ranking share {shared} of the {keep} kept channels")
figures.show(fig)
del work

# %% [markdown]
# The printout says how far the two rankings agree. The group's score also counts what the next
# convolution's input weights and the batch norm's γ contribute: removing a channel removes all of
# them at once, which is why torch-pruning scores groups, not layers.
#
# ## 3 · One shot or in steps
#
# **One-shot** removes all the channels at once, then fine-tunes for `STEPS` steps.
# **Iterative** (`tp.pruner.BasePruner(..., iterative_steps=4)`) calls `pruner.step()` four times,
# each removing a quarter of the budget (the cell prints the steps), with `STEPS / 4` fine-tune
# steps after each; the learning rate decays over all `STEPS`, so the
# two schedules spend the same optimizer steps on the same batches. Iterative pruning lets the
# network adapt before the next channels go, and every importance is recomputed on the adapted
# network; but it spends three quarters of its steps training networks wider than the final one,
# and gets only `STEPS / 4` at the final width. The cell runs each importance both ways:

# %%
print("iterative: " + ", ".join(f"{RATE * (i + 1) / 4:.1%}" for i in range(4))
      + " of every layer's channels removed after each pruning step")
bar = tqdm(total=STEPS * len(prune_schedule.METHODS), desc="fine-tune steps")
seconds = {}
for method in prune_schedule.METHODS:
    start = time.perf_counter()
    pruned = prune_schedule.prune_and_finetune(student, RATE, method, STEPS, lr=LR,
                                               batch_size=BATCH, seed=SEED,
                                               grad_batches=grad_batches, bar=bar)
    seconds[method.name] = time.perf_counter() - start
    records.append(measure.measure(pruned, method.name, limit=EVAL_IMAGES, batch_sizes=(),
                                   val=VAL_IMAGES,
                                   tags=["prune-structured", method.importance,
                                         f"iterative-{method.iterative_steps}", "finetune"]))
bar.close()
print("seconds per method: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))

# %% [markdown]
# ## 4 · The comparison
#
# Validation accuracy (on the validation images, never used for training) is what a choice is
# made on; test accuracy (the full 10k) is the claim. Each Δ is a paired difference on the same test
# images, with its standard error from the images on which the two models disagree.

# %%
print(prune_schedule.summary(records))
assert len({(r["params"], r["macs"]) for r in records[1:]}) == 1   # one budget for every method
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3))
base = find(records, "student")
for i, m in enumerate(prune_schedule.METHODS):
    d, se = tables.paired_delta(find(records, m.name), base)
    ax.errorbar(d, i, xerr=prune_schedule.NOISE_SE * (se or 0), fmt="o", capsize=3,
                color="C0" if m.iterative_steps == 1 else "C1")
ax.set_yticks(range(len(prune_schedule.METHODS)), [m.name for m in prune_schedule.METHODS])
ax.invert_yaxis()
ax.set_xlabel(f"test accuracy minus the unpruned student's (pt, ±{prune_schedule.NOISE_SE} paired SE)")
ax.set_title(f"{RATE:.0%} of the channels removed, {STEPS} fine-tune steps each")
figures.show(fig)

# %%
pairs = [(m.name, "l2-one-shot") for m in prune_schedule.METHODS if m.name != "l2-one-shot"]
pairs += [(f"{imp}-4-steps", f"{imp}-one-shot") for imp in prune_schedule.IMPORTANCES]
diffs = prune_schedule.differences(records, pairs)
for k, v in diffs.items():
    print(f"{k:>30}: {v['delta_pt']:+.2f} ± {v['se_pt']:.2f} pt  "
          f"{'real' if v['real'] else 'within noise'}")
print("\n" + prune_schedule.verdict(records))
if SMOKE:
    print("(smoke mode: a few steps on a few images, these figures are not the claims)")

# %% [markdown]
# The paired standard error covers which test images were drawn, not the fine-tune's own
# randomness: another `SEED` (batch order) moves every row a little too. A difference the lines
# above call real is one this run's test set resolves; whether it holds across seeds and at
# longer fine-tunes (where iterative pruning's last segment is no longer short) is a further
# experiment: change `STEPS` or `SEED` and run the notebook again.

# %%
verdicts = {"importance_schedule": {"rate": RATE, "steps": STEPS, "lr": LR, "seed": SEED,
                                    "noise_se": prune_schedule.NOISE_SE,
                                    "differences": diffs, "verdict": prune_schedule.verdict(records)}}
path = report.write_notebook_results(NOTEBOOK, records, smoke=SMOKE, verdicts=verdicts)

# %% [markdown]
# **Next:** [02 · Quantization](02_quantization.ipynb) stores each remaining weight in one byte.
