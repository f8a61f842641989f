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
# # 01 · Pruning: what removing weights really buys
#
# A blog post that inspired this workbook says that zeroing half of a model's weights "prunes it to
# half its size". This notebook tests that claim, then does pruning the way that pays off.
#
# **You will learn**
# - to write magnitude pruning yourself: a mask that keeps the largest weights, with a global or a
#   per-layer threshold;
# - why zeros alone shrink neither the file nor the latency, and why fine-tuning needs the mask;
# - which layers of a ResNet18 tolerate pruning (a sensitivity scan), and how to use that;
# - structured pruning with [torch-pruning](https://github.com/VainF/Torch-Pruning): removing whole
#   channels, which does make the model smaller and faster;
# - a live slider: prune rate × method against accuracy, size and latency.
#
# **Time:** about 4–5 minutes at the defaults on 2 cores; under a minute in smoke mode.

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "01_pruning"

# %%
import warnings

import matplotlib.pyplot as plt
import torch
import torch.utils.benchmark as benchmark
from IPython.display import display

from edgelab import cache, check, data, figures, measure, models, prune, report, sensitivity, train, widgets
from edgelab import counts, evaluation, latency, memory, plots, tables
from edgelab.records import find
from edgelab.sizes import gzip_compress

memory.setup_notebook()   # trims the heap after every cell: memory stays what Python holds

EVAL_IMAGES = 500 if SMOKE else None    # accuracy claims: the full 10k test set at defaults
SUBSET = 200 if SMOKE else 1000         # validation images for scans and quick looks
LATENCY_S = 0.2 if SMOKE else 1.0
FINETUNE_STEPS = 4 if SMOKE else 60     # live fine-tunes (the full one ships as a checkpoint)
FINETUNE_LR = 0.002
SCAN_RATES = [0.5, 0.9] if SMOKE else [0.5, 0.7, 0.9]
SCAN_IMAGES = 100 if SMOKE else 250
SLIDER_IMAGES = 200                     # the slider's fixed subset: the first 200 validation images

torch.manual_seed(0)
val_x, val_y = data.tensors("val", limit=SUBSET)
teacher = models.load_checkpoint("teacher")
records = [measure.measure(teacher, "teacher", tags=["baseline", "fp32"], limit=EVAL_IMAGES,
                           min_run_time=LATENCY_S)]
display(tables.table(records))


# %%
def subset_accuracy(model):
    # accuracy on the fixed validation subset, for quick comparisons
    return evaluation.accuracy_on(model, val_x, val_y)

print(f"teacher on the {SUBSET} validation images: {100 * subset_accuracy(teacher):.1f} %")


# %% [markdown]
# ## 1 · Magnitude pruning, written correctly
#
# The simplest rule: weights close to zero contribute least, so remove the fraction `rate` with the
# smallest magnitude |w|. Two details decide whether your code is right:
#
# - **count, don't compare**: with `k = round(rate * n)` weights to prune, keep exactly `n - k`.
#   Comparing with a threshold prunes the wrong number when magnitudes tie at it: `abs(w) > t`
#   prunes *every* tied weight (too many), and the blog's `abs(w) >= t` keeps every one (too few,
#   shown below);
# - **rate is the fraction removed**: rate 0 keeps everything, rate 0.9 keeps a tenth.
#
# ### Your turn
#
# Write `my_magnitude_mask(weight, rate)`, returning a bool tensor of `weight`'s shape that is
# `True` for the weights to keep, and `my_magnitude_threshold(weight, rate)`, returning the largest
# pruned magnitude (0.0 at rate 0). The checkers run them on small fixed tensors (ties, rate 0, rate
# 0.9) and tell you what is off. Skip it and the notebook uses the reference implementation.

# %%
def my_magnitude_mask(weight, rate):
    # Hint: weight.abs().flatten().topk(...) gives the indices of the largest magnitudes.
    raise NotImplementedError

def my_magnitude_threshold(weight, rate):
    # Hint: torch.kthvalue gives the k-th smallest value.
    raise NotImplementedError

magnitude_mask = check.magnitude_mask(my_magnitude_mask)
magnitude_threshold = check.magnitude_threshold(my_magnitude_threshold)

# %% [markdown]
# ### Global or per layer?
#
# A *global* threshold ranks the weights of all layers together; a *per-layer* rate removes the
# same fraction from each layer. At the same overall rate they prune very different layers:

# %%
RATE = 0.5
pruned_global = prune.unstructured(teacher, RATE, scope="global", mask_fn=magnitude_mask)
pruned_layer = prune.remove_masks(prune.unstructured(teacher, RATE, scope="layer", mask_fn=magnitude_mask))

names = list(prune.prunable_layers(teacher))
per_layer = [(m.weight == 0).float().mean().item() for m in prune.prunable_layers(pruned_global).values()]
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3))
ax.bar(range(len(names)), per_layer, label="global threshold")
ax.axhline(RATE, color="k", ls="--", label=f"per-layer rate {RATE}")
ax.set_xticks(range(len(names)), names, rotation=90, fontsize=9)
ax.set_ylabel("fraction pruned"); ax.legend(loc="upper left")
ax.set_title(f"A global {RATE:.0%} threshold prunes layers from {min(per_layer):.0%} to {max(per_layer):.0%}")
figures.show(fig)
all_weights = torch.cat([m.weight.flatten() for m in prune.prunable_layers(teacher).values()])
print(f"the global cut removes every weight with |w| <= {magnitude_threshold(all_weights, RATE):.4f}")
for name, m in [("global", pruned_global), ("per-layer", pruned_layer)]:
    print(f"{name:>9}: sparsity {prune.sparsity(m):.3f}, validation accuracy {100 * subset_accuracy(m):.1f} %")
del pruned_layer, m, all_weights  # each copy of the teacher's weights costs 45 MB: keep only what is still needed
memory.release_memory()

# %% [markdown]
# The global threshold prunes the layers very unevenly (the bars above). It is tempting to read
# that as "these layers' weights matter less", but with a batch norm after every convolution a
# convolution's weight *scale* carries no meaning: batch norm divides it out. Multiply one
# convolution's weights by 10, and its batch norm's running mean by 10 and running variance by
# 100: in eval mode the network computes the same function (up to the small `eps` inside the
# square root), yet a global magnitude ranking now treats that layer very differently.

# %%
import copy

rescaled = copy.deepcopy(teacher)
conv, bn = rescaled.layer2[0].conv1, rescaled.layer2[0].bn1
with torch.no_grad():
    conv.weight.mul_(10)
    bn.running_mean.mul_(10)
    bn.running_var.mul_(100)
with torch.no_grad():
    same = float((rescaled(val_x[:64]) - teacher(val_x[:64])).abs().max())
share = {}
for label, m in (("original", teacher), ("layer2.0.conv1 x10", rescaled)):
    layers = prune.prunable_layers(m)
    cut = magnitude_threshold(torch.cat([l.weight.detach().flatten() for l in layers.values()]), RATE)
    share[label] = float((layers["layer2.0.conv1"].weight.detach().abs() <= cut).float().mean())
print(f"largest logit difference after the rescale: {same:.1e} (the same function)")
print(f"share of layer2.0.conv1 a global {RATE:.0%} threshold removes: original "
      f"{share['original']:.1%}, rescaled {share['layer2.0.conv1 x10']:.1%}")
del rescaled
memory.release_memory()

# %% [markdown]
# Same network, very different pruning. A global magnitude threshold is therefore a heuristic that
# works when layers' weight scales happen to be comparable, not a measure of importance across
# layers; the sensitivity scan below measures importance directly, one layer at a time.
#
# ### The seed's claim: "pruned to 50 % of its size"
#
# Make the zeros permanent (`remove_masks`), save the model, and measure it next to the teacher:

# %%
zeros50 = prune.remove_masks(prune.clone(pruned_global))
records.append(measure.measure(zeros50, "unstructured-50", tags=["prune-unstructured"],
                               limit=EVAL_IMAGES, batch_sizes=()))
# the same architecture as the teacher: timed together, in turns (latency.remeasure_latency)
latency.remeasure_latency(records, {"teacher": teacher, "unstructured-50": zeros50},
                          min_run_time=LATENCY_S)
display(tables.table(records))
t, z = records[0], records[-1]
print(f"\nnon-zero weights: {z['nonzero_params'] / t['nonzero_params']:.0%} of the teacher's; "
      f"saved file: {z['bytes'] / t['bytes']:.0%}; gzip: {z['gzip_bytes'] / t['gzip_bytes']:.0%}; "
      f"batch-1 latency: {z['latency_b1_ms'] / t['latency_b1_ms']:.0%}")

# %% [markdown]
# Half the weights are zero, yet the file is as large as before: a dense tensor stores every zero
# in four bytes. Only a compressor (or a sparse format) notices them. And a dense convolution
# multiplies by zero as fast as by anything else, so latency does not move either (differences of a
# few percent are timing noise). Zeros pay off only with sparse kernels or sparsity-aware hardware.
#
# ### Your turn: when do zeros pay?
#
# A sparse format stores only the non-zeros, plus where they are. In **CSR** (compressed sparse
# row), a weight seen as a matrix of `rows` output channels by `in·k·k` columns keeps: each
# non-zero value (4 bytes in fp32), its column index, and `rows + 1` row pointers (where each row
# starts, and the end). Write `csr_bytes(weight, index_bytes)`; torch stores indices as int64
# (8 bytes), int32 halves them. `check.csr_bytes` compares with what torch's own CSR tensor
# (`weight.reshape(out, -1).to_sparse_csr()`) holds.

# %%
def my_csr_bytes(weight, index_bytes=8):
    # w = weight.reshape(weight.shape[0], -1); nnz = number of non-zeros
    # values: nnz * 4; column indices: nnz * index_bytes; row pointers: (rows + 1) * index_bytes
    raise NotImplementedError

csr_bytes = check.csr_bytes(my_csr_bytes)

# %% [markdown]
# Your count on one of the teacher's layers, pruned by magnitude to three sparsities, against its
# dense bytes; the sparsity where CSR starts to pay; and the time of one matrix product with the
# layer's weights (its input as 64 columns) with `torch.sparse` against dense, on this CPU.

# %%
w_layer = teacher.layer3[0].conv2.weight.detach()
rows, cols = w_layer.shape[0], w_layer[0].numel()
x_cols = torch.randn(cols, 64, generator=torch.Generator().manual_seed(0))
dense_b = w_layer.numel() * 4
for ib in (8, 4):   # dense = nnz (4 + ib) + (rows + 1) ib  →  the break-even density
    density = (dense_b - (rows + 1) * ib) / ((4 + ib) * w_layer.numel())
    print(f"{8 * ib}-bit indices: CSR is smaller than dense above {100 * (1 - density):.0f} % sparsity")


def timed(fn):
    return benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()
                           ).blocked_autorange(min_run_time=LATENCY_S / 4).median * 1e3


w2d = w_layer.reshape(rows, cols)
dense_ms = timed(lambda: w2d @ x_cols)
print(f"\nlayer3.0.conv2 ({rows} x {cols}), dense: {dense_b / 1e6:.2f} MB, {dense_ms:.3f} ms per product")
for rate in (0.5, 0.9, 0.99):
    sparse_w = w_layer * prune.magnitude_mask(w_layer, rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "sparse CSR support is in beta"
        w_csr = sparse_w.reshape(rows, cols).to_sparse_csr()
        sparse_ms = timed(lambda: w_csr @ x_cols)
    print(f"{rate:4.0%} zeros: CSR {csr_bytes(sparse_w, 8) / 1e6:.2f} MB (int64), "
          f"{csr_bytes(sparse_w, 4) / 1e6:.2f} MB (int32); torch.sparse product {sparse_ms:.3f} ms "
          f"({dense_ms / sparse_ms:.2f}x dense's speed)")

# %% [markdown]
# The printout shows, on this CPU, which sparsity it takes before the bytes and the time of a
# general sparse format beat dense. **2:4 (N:M) semi-structured sparsity** is the structured
# middle ground GPUs use: in every group of four consecutive weights exactly two are zero, so the
# values take half the bytes and the positions take 2 bits per kept value; NVIDIA's Ampere and
# later Sparse Tensor Cores multiply such matrices at up to twice the dense rate (Mishra et al.,
# 2021, [arXiv:2104.08378](https://arxiv.org/abs/2104.08378)). PyTorch exposes it through
# `torch.sparse.to_sparse_semi_structured`, which runs on CUDA GPUs only
# ([docs](https://docs.pytorch.org/docs/stable/sparse.html#sparse-semi-structured-tensors));
# this workbook's CPU has no kernel for it, and the Pi's cores have none either.
#
# ### The blog's `prune_model`, line by line
#
# The cell re-types the blog's rule for one tensor (the blog loops it over every Conv2d and
# Linear): `num_prune = int(n * rate)`, sort the magnitudes, `threshold = weight_abs[num_prune]`,
# keep `abs(w) >= threshold`. Run on a small tensor whose magnitudes tie, and at rate 1.0. (The
# blog's snippet also calls `torch.sort` without importing `torch`; it only runs because the blog's
# next snippet happens to import torch before calling it.)

# %%
def blog_prune_tensor(weight, prune_rate):   # the blog's prune_model, re-typed for one tensor
    num_prune = int(weight.numel() * prune_rate)
    weight_abs = torch.sort(weight.abs().view(-1))[0]
    threshold = weight_abs[num_prune]
    return weight * (weight.abs() >= threshold).float()


tied = torch.tensor([0.1, -0.2, 0.2, -0.2, 0.2, 0.3, -0.4, 0.5])
blog_ties = {}
for rate in (0.25, 0.5):
    zeros = int((blog_prune_tensor(tied, rate) == 0).sum())
    counted = int((~prune.magnitude_mask(tied, rate)).sum())
    blog_ties[rate] = {"asked": int(tied.numel() * rate), "blog": zeros, "counted": counted}
    print(f"rate {rate}: asks for {blog_ties[rate]['asked']} zeros of {tied.numel()}; the blog's "
          f"rule makes {zeros}, the counted mask {counted}")
try:
    blog_prune_tensor(tied, 1.0)
    rate_one = "no error"
except IndexError as e:
    rate_one = f"IndexError: {e}"
print(f"rate 1.0: {rate_one}")
#
# ### Fine-tuning: with or without the mask?
#
# Pruning usually costs some accuracy, recovered by training a little more. Train the pruned model
# for a few steps twice: once as a plain model with zeros in it, once with the masks attached.

# %%
print(f"sparsity before: {prune.sparsity(zeros50):.3f}")
no_mask = train.finetune_steps(zeros50, steps=min(FINETUNE_STEPS, 5))   # trains in place
regrown = prune.sparsity(no_mask)
print(f"after {min(FINETUNE_STEPS, 5)} steps without the mask: {regrown:.3f}   (the zeros grew back)")
del no_mask, zeros50
memory.release_memory()
with_mask = train.finetune_steps(pruned_global, steps=FINETUNE_STEPS, lr=FINETUNE_LR)
print(f"after {FINETUNE_STEPS} steps with the mask kept:  {prune.sparsity(with_mask):.3f}")

# %% [markdown]
# Without the mask, the first gradient step moves every zero off zero: the pruning is undone.
# `torch.nn.utils.prune` stores the mask beside the weight and multiplies it in on every forward
# pass, so pruned weights get no gradient and stay zero. Here is the masked, fine-tuned model on the
# test set:

# %%
finetuned = prune.remove_masks(with_mask)
del with_mask
records.append(measure.measure(finetuned, "unstructured-50-finetuned",
                               tags=["prune-unstructured", "mask", "finetune"],
                               limit=EVAL_IMAGES, batch_sizes=()))
# three models of one architecture, timed together in turns so the table compares like with like
del pruned_global   # fine-tuned in place: it *is* `finetuned` now
zeros50 = copy.deepcopy(teacher)   # unstructured-50 again: the teacher under the same masks
with torch.no_grad():
    for z, f in zip(prune.prunable_layers(zeros50).values(), prune.prunable_layers(finetuned).values()):
        z.weight.mul_(f.weight != 0)
latency.remeasure_latency(records, {"teacher": teacher, "unstructured-50": zeros50,
                                    "unstructured-50-finetuned": finetuned}, min_run_time=LATENCY_S)
gap = 100 * (records[0]["accuracy"] - records[-1]["accuracy"])
print(f"teacher {100 * records[0]['accuracy']:.2f} %  vs  50 % unstructured, masked fine-tune "
      f"{100 * records[-1]['accuracy']:.2f} %  ({abs(gap):.2f} pt {'below' if gap >= 0 else 'above'} "
      f"the teacher; bar: within 0.3 pt)")
del finetuned, zeros50
memory.release_memory()

# %% [markdown]
# ## 2 · Sensitivity: which layers can lose weights?
#
# Prune one layer at a time, at several rates, and watch the accuracy on a few hundred validation
# images. Layers whose curve stays flat can be pruned hard; steep ones should be spared.

# %%
scan_x, scan_y = val_x[:SCAN_IMAGES], val_y[:SCAN_IMAGES]
# cached under build/cache/, keyed by the teacher's sha256 and the scan's sizes
scan = cache.cached_json("sensitivity", [models.read_card("teacher")["sha256"], SCAN_RATES, SCAN_IMAGES],
                         lambda: sensitivity.sensitivity_scan(teacher, SCAN_RATES, scan_x, scan_y))
worst = min(scan, key=lambda n: scan[n][-1])
best = max(scan, key=lambda n: scan[n][-1])
# All layers in grey; the three most and the three least sensitive in colour, with ±1 SE.
ranked = sorted(scan, key=lambda n: scan[n][-1])
picked = ranked[:3] + ranked[-3:]
fig, ax = plt.subplots(figsize=(figures.WIDTH, 4))
for name, accs in scan.items():
    if name not in picked:
        ax.plot(SCAN_RATES, [100 * a for a in accs], color="0.8", lw=1, zorder=1)
for name in picked:
    figures.accuracy_errorbar(ax, SCAN_RATES, scan[name], SCAN_IMAGES, ls="-", label=name)
ax.plot([], [], color="0.8", label=f"the other {len(scan) - len(picked)} layers")
ax.set_xlabel("rate pruned in this layer alone")
ax.set_ylabel(f"accuracy (%)\n{SCAN_IMAGES:,} val. images, ±1 SE")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
ax.set_title(f"{worst} is the most sensitive layer, {best} the least")
figures.show(fig)
print(f"most sensitive at rate {SCAN_RATES[-1]}: {worst} ({100 * scan[worst][-1]:.1f} %); "
      f"least: {best} ({100 * scan[best][-1]:.1f} %)")

# %% [markdown]
# Now a plan: give each layer the highest rate its curve tolerates, scaled so the model as a whole
# is pruned by `TARGET`, and compare it with a uniform per-layer rate and with one global threshold
# at the same overall sparsity (no fine-tuning for any of them). The scan prunes one layer at a
# time, so it cannot see how layers interact; whether the plan wins is for the numbers to say:

# %%
TARGET = 0.7
sizes = {n: m.weight.numel() for n, m in prune.prunable_layers(teacher).items()}
plan = sensitivity.sensitivity_plan(scan, SCAN_RATES, sizes, TARGET)
for name, how in [("uniform per-layer", dict(rate=TARGET, scope="layer")),
                  ("global threshold", dict(rate=TARGET, scope="global")),
                  ("sensitivity plan", dict(rate=plan))]:
    m = prune.remove_masks(prune.unstructured(teacher, **how))
    print(f"{name:>18}: sparsity {prune.sparsity(m):.3f}, accuracy on {SUBSET} validation images "
          f"{100 * subset_accuracy(m):.1f} %")
    del m
    memory.release_memory()
fig, ax = plt.subplots(figsize=(figures.WIDTH, 3))
ax.bar(range(len(plan)), list(plan.values()), label="sensitivity plan")
ax.axhline(TARGET, color="k", ls="--", label="uniform")
ax.set_xticks(range(len(plan)), list(plan), rotation=90, fontsize=9); ax.legend(loc="upper left")
ax.set_ylabel("rate"); ax.set_title(f"The plan's per-layer rates for {TARGET:.0%} overall: "
                                    f"{min(plan.values()):.2f} to {max(plan.values()):.2f}")
figures.show(fig)

# %% [markdown]
# ## 3 · Structured pruning: remove channels, not weights
#
# To make a dense model smaller *and* faster, remove whole output channels: the convolution gets
# thinner, and so do the batch norm after it and the convolution reading its output. In a ResNet the
# residual additions tie channels of several layers together; torch-pruning builds a dependency
# graph so all coupled layers shrink consistently. The classifier's 10 outputs are kept.
#
# ### Your turn: remove channels by hand
#
# Start with one pair where nothing else reads the channels: inside a ResNet block, `conv1 → bn1
# → ReLU → conv2`. Write `prune_pair(conv, bn, next_conv, rate)`: rank `conv`'s output channels by
# the L2 norm of their filters, keep the `round((1 − rate) · C)` largest (in their original order),
# and build three **new** modules: a thinner `conv`, the batch norm sliced to the same channels
# (weight, bias, running mean and variance), and `next_conv` with only those *input* channels.
# `check.prune_pair` compares your block with the original one in which the removed channels'
# activations are set to zero after the ReLU. Note: a removed filter's output would *not* be zero
# after the batch norm (β − γμ/σ can pass the ReLU), so the pruned block is not exactly the
# original with those filters zeroed; it is what the fine-tune starts from.

# %%
def my_prune_pair(conv, bn, next_conv, rate):
    # keep = round((1 - rate) * conv.out_channels)
    # idx = conv.weight.detach().flatten(1).norm(dim=1).topk(keep).indices.sort().values
    # new conv with conv.weight[idx]; new BatchNorm2d(keep) with bn.weight[idx], bn.bias[idx],
    # bn.running_mean[idx], bn.running_var[idx]; new next conv with next_conv.weight[:, idx]
    raise NotImplementedError

prune_pair = check.prune_pair(my_prune_pair)

# %% [markdown]
# Your function on the teacher's first block, at half its inner channels: the block's parameters
# and its time on one image's activations, and the whole teacher's accuracy with only that block
# thinned (no fine-tune).

# %%
block = teacher.layer1[0]
thin = prune.clone(teacher)
thin.layer1[0].conv1, thin.layer1[0].bn1, thin.layer1[0].conv2 = prune_pair(block.conv1, block.bn1,
                                                                             block.conv2, 0.5)
act = torch.randn(1, block.conv1.in_channels, 28, 28, generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    ms = {name: benchmark.Timer("b(a)", globals={"b": b.eval(), "a": act}).blocked_autorange(
        min_run_time=LATENCY_S / 4).median * 1e3 for name, b in (("original", block),
                                                                  ("thinned", thin.layer1[0]))}
print(f"layer1.0: {counts.count_params(block):,} -> {counts.count_params(thin.layer1[0]):,} "
      f"parameters, {ms['original']:.3f} -> {ms['thinned']:.3f} ms on one image's activations")
print(f"teacher with only layer1.0 thinned: {100 * subset_accuracy(thin):.1f} % on {SUBSET} "
      f"validation images (unpruned {100 * subset_accuracy(teacher):.1f} %)")
del thin

# %% [markdown]
# By hand this only works where the channels are private to the pair. `conv2`'s *output* channels
# are not: they are added to the block's input by the residual connection, which is the previous
# block's output, which is added to the one before, so every block of a stage (and the stem or
# shortcut projection that starts it) must keep or drop the *same* channels, and the batch norms
# and the next stage's first convolutions follow. Torch-Pruning ([Fang et al., CVPR 2023,
# "DepGraph"](https://arxiv.org/abs/2301.12900)) traces the model once, groups every layer
# coupled this way, and removes a channel from all of them at once; `prune.structured` below uses
# it on the whole network.
#
# "50 %" here means half the channels of every prunable layer. A 3×3 convolution's weights scale
# with (input channels × output channels), so halving both leaves about a quarter of the parameters:

# %%
# NBVAL_CHECK_OUTPUT
half = prune.structured(teacher, 0.5, val_x[:1])  # the example input gives the shapes
print(f"conv1: {teacher.conv1.out_channels} -> {half.conv1.out_channels} channels; "
      f"layer4: {teacher.layer4[1].conv2.out_channels} -> {half.layer4[1].conv2.out_channels}")
print(f"parameters: {counts.count_params(teacher):,} -> {counts.count_params(half):,} "
      f"({counts.count_params(half) / counts.count_params(teacher):.1%}); "
      f"MACs: {counts.count_macs(teacher):,} -> {counts.count_macs(half):,}")

# %%
records.append(measure.measure(half, "structured-50", tags=["prune-structured"],
                               limit=SUBSET, min_run_time=LATENCY_S))
display(tables.table([records[0], records[-1]]))

# %% [markdown]
# Smaller and faster, but without recovery the accuracy collapses (this row is measured on the
# first images of the test set only, to save time). Recovery is a fine-tune of the same recipe as the
# teacher's. A few live steps show it starting to climb:

# %%
live = prune.clone(half)
for step in range(3):
    train.finetune_steps(live, steps=max(FINETUNE_STEPS // 3, 1), lr=0.02)
    print(f"after {(step + 1) * max(FINETUNE_STEPS // 3, 1)} steps: {100 * subset_accuracy(live):.1f} % on {SUBSET} validation images")

# %% [markdown]
# The full recovery (several epochs, too long for a notebook) ran as a command and ships as a
# checkpoint. Its card says how it was made; here it is loaded (sha256 verified) and re-measured in
# this run, on the full test set:

# %%
card = models.read_card("pruned50")
print(f"`{card['command']}`: {card['epochs']} epochs from the teacher (sha256 {card['init']['sha256'][:12]}…), "
      f"{card['wall_time_s'] / 60:.0f} min on {card['device']}")
pruned50 = models.load_checkpoint("pruned50")
records.append(measure.measure(pruned50, "structured-50-finetuned",
                               tags=["prune-structured", "finetune"], limit=EVAL_IMAGES,
                               batch_sizes=()))
# one architecture before and after the fine-tune: timed together, in turns
latency.remeasure_latency(records, {"structured-50": half, "structured-50-finetuned": pruned50},
                          min_run_time=LATENCY_S)
display(tables.table([records[0], records[-1]]))

# %% [markdown]
# ### Does the recovery owe anything to the teacher's weights?
#
# `pruned50` started from the teacher's weights and trained for 8 more epochs: 14 in all, more than
# the teacher's own 6. Without a control, "the fine-tune recovers the accuracy" cannot be told
# apart from "the thinner network, trained that long, gets there anyway". The control is the same
# thinner architecture trained from fresh weights for the same 14 epochs with the teacher's recipe
# ("Scratch-B" in Liu et al., 2019, [Rethinking the Value of Network Pruning](https://arxiv.org/abs/1810.05270)),
# shipped as `pruned50-scratch` and re-measured here:

# %%
card = models.read_card("pruned50-scratch")
print(f"`{card['command']}`: {card['epochs']} epochs from fresh weights, "
      f"{card['wall_time_s'] / 60:.0f} min on {card['device']}")
scratch50 = models.load_checkpoint("pruned50-scratch")
records.append(measure.measure(scratch50, "pruned50-scratch", tags=["prune-structured", "scratch"],
                               limit=EVAL_IMAGES, batch_sizes=()))
latency.remeasure_latency(records, {"structured-50": half, "structured-50-finetuned": pruned50,
                                    "pruned50-scratch": scratch50}, min_run_time=LATENCY_S)
ft, sc = find(records, "structured-50-finetuned"), records[-1]
d, se = tables.paired_delta(ft, sc)
print(f"fine-tuned from the teacher {100 * ft['accuracy']:.2f} %, trained from scratch "
      f"{100 * sc['accuracy']:.2f} % on {sc['test_images']:,} test images; fine-tuned minus scratch "
      f"{d:+.2f} ± {se:.2f} pt (paired standard error)")
print(f"on the {data.VAL_SIZE:,} validation images (the cards): fine-tuned "
      f"{100 * models.read_card('pruned50')['val_accuracy']:.2f} %, scratch {100 * card['val_accuracy']:.2f} %")
print("→ on test, " + ("the fine-tune is ahead by more than two standard errors" if d > 2 * se else
              "training from scratch is ahead by more than two standard errors" if d < -2 * se else
              "a tie: the difference is within two standard errors"))
scratch_control = {"finetuned": ft["accuracy"], "scratch": sc["accuracy"], "delta_pt": d, "se_pt": se,
                   "epochs": card["epochs"]}
del scratch50

# %% [markdown]
# The line above is this run's answer. It compares one run of each recipe, so it speaks for these
# two models, not for the methods in general. Liu et al. found that for structured pruning to a
# predefined architecture like this one (every layer at half its channels), training the small
# network from scratch for as long matches or beats fine-tuning the pruned one. Where the two tie,
# what the teacher's weights bought is training time: `pruned50` trained 8 epochs, not 14 (both
# cards' wall times are printed above).

# %% [markdown]
# ## 4 · The slider
#
# Move the prune rate and switch the method. Accuracy is measured on the first validation images
# (the number is printed), non-zeros, bytes and gzip bytes are
# counted on the pruned model (gzip as in every record: `gzip_compress`, zlib's fast
# run-length setting), and batch-1 latency is the median of ten runs. Structured rates are pruned
# the first time you visit them and then cached.

# %%
panel = widgets.prune_panel(teacher, val_x[:SLIDER_IMAGES], val_y[:SLIDER_IMAGES])
panel

# %% [markdown]
# Nobody moves a slider when this notebook runs headless, so the next cell drives the panel through
# a sweep, the way a learner would, and records how long each move took to answer:

# %%
sweep_rates = [0.25, 0.5] if SMOKE else [0.1, 0.3, 0.5, 0.7, 0.9]
for method in ["unstructured", "structured"]:
    panel.set(method=method)
    panel.sweep("rate", sweep_rates)
slider = panel.timing()
print(f"median response {slider['median_s']:.2f} s over {slider['moves']} moves "
      f"(slowest {slider['max_s']:.2f} s; bar: median <= 1 s)")

# %% [markdown]
# ## What we measured
#
# Every row was measured in this run, the teacher included, so the ratios compare like with like.

# %%
display(tables.table(records, bars={"×faster b1": 2}))   # the bar for structured-50-finetuned
t, u, s = (find(records, n) for n in ("teacher", "unstructured-50", "structured-50-finetuned"))
fig = plots.cost_figure(records, title=f"Zeros leave the file at {t['bytes'] / u['bytes']:.2f}x; "
                                        f"removing channels makes it {t['bytes'] / s['bytes']:.1f}x smaller")
figures.show(fig)

# %%
t = find(records, "teacher")
s = find(records, "structured-50-finetuned")
u = find(records, "unstructured-50-finetuned")
bars = [
    ("50 % structured + fine-tune: >= 2x lower batch-1 latency",
     t["latency_b1_ms"] / s["latency_b1_ms"], t["latency_b1_ms"] / s["latency_b1_ms"] >= 2),
    ("50 % structured + fine-tune: within 0.5 pt of the teacher",
     100 * (t["accuracy"] - s["accuracy"]), t["accuracy"] - s["accuracy"] <= 0.005),
    ("50 % unstructured, masked fine-tune: within 0.3 pt",
     100 * (t["accuracy"] - u["accuracy"]), t["accuracy"] - u["accuracy"] <= 0.003),
    ("slider median response <= 1 s", slider["median_s"], slider["median_s"] <= 1.0),
]
for what, value, ok in bars:
    print(f"{'met   ' if ok else 'MISSED'}  {what}: {value:.2f}")
if SMOKE:
    print("(smoke mode: small sizes, these figures are not the claims)")
seed_claims = {"1": report.seed_claim(
    "prune_model's rule re-typed (keep |w| >= sorted[int(n * rate)]) on a tensor with ties and at "
    "rate 1.0; 50 % magnitude zeros saved, timed and fine-tuned without the mask",
    {"ties": {str(r): v for r, v in blog_ties.items()}, "rate_1.0": rate_one,
     "zeros_file_bytes_vs_teacher": find(records, "unstructured-50")["bytes"] / t["bytes"],
     "zeros_latency_b1_vs_teacher":
         find(records, "unstructured-50")["latency_b1_ms"] / t["latency_b1_ms"],
     "sparsity_after_unmasked_finetune": regrown})}
path = report.write_notebook_results(NOTEBOOK, records, widgets={"prune_rate": slider}, smoke=SMOKE,
                                     seed_claims=seed_claims, verdicts={"scratch_control": scratch_control})

# %% [markdown]
# **What it means.** Zeros are free to make and worth nothing on a dense CPU kernel; removed
# channels are what shrink the file and the latency. Pruning half the channels removes about three
# quarters of the weights and the arithmetic, and a fine-tune brings the accuracy back.
#
# **Next:** [01 · Which channels, and when](01_pruning_importance.ipynb) compares importances (L2,
# Taylor, batch-norm γ) and one-shot against iterative pruning on the student, at one channel
# budget; then [02 · Quantization](02_quantization.ipynb) stores each remaining weight in one byte.
