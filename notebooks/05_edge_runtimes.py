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
# # 05 · Three edge runtimes: ONNX Runtime, ExecuTorch and LiteRT on one model and two emulated Pis
#
# The blog post this workbook follows (see 00_baseline) names TensorFlow Lite (now
# [LiteRT](https://github.com/google-ai-edge/LiteRT)) and [ONNX Runtime](https://onnxruntime.ai/)
# as the ways to run a compressed model on a Raspberry Pi; PyTorch's own answer for the edge is
# [ExecuTorch](https://github.com/pytorch/executorch). 05_deploy_pi deployed with ONNX Runtime
# only. Here the same model goes through all three, in fp32 and in
# int8, and every number comes from the file each runtime would ship:
#
# - **ONNX Runtime**: `torch.onnx` export, then ONNX Runtime's static QDQ quantization (as in
#   05_deploy_pi), uint8 activations and int8 weights; on an x86 CPU without VNNI the weights keep
#   7 bits (`reduce_range`), because there ONNX Runtime's uint8 × int8 kernels can saturate
#   ([ONNX Runtime's docs](https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html))
#   and the file's answers here would not be a Pi's (section 1 prints which applies);
# - **ExecuTorch**: `torch.export`, lowered to a `.pte` program with the
#   [XNNPACK delegate](https://docs.pytorch.org/executorch/stable/backends-xnnpack.html); int8 by
#   PT2E with ExecuTorch's `XNNPACKQuantizer`, which targets XNNPACK's int8 kernels (the ones
#   a Pi runs), where 02_quantization_flows used `X86InductorQuantizer`;
# - **LiteRT**: converted by [litert-torch](https://github.com/google-ai-edge/litert-torch) to a
#   `.tflite` flatbuffer, run by `ai-edge-litert`'s interpreter (XNNPACK by default); int8 by PT2E
#   with litert-torch's quantizer, full-integer (int8 in, int8 out).
#
# **You will learn**
# - what each runtime's file weighs, how fast it runs here, and how closely it agrees with PyTorch;
# - why the ExecuTorch and LiteRT files have a fixed batch size in this workbook;
# - what an ExecuTorch program costs without its XNNPACK delegate;
# - what each runtime needs on a Pi, and whether its bundle gives x86's answers on an emulated
#   Pi 4 and Pi 5.
#
# The model is `student-pruned25-kd-s0`, the pruned and distilled student on 06's frontier,
# loaded from its shipped checkpoint. (06 picks the model it ships on validation in each run, so
# in yours it may pick another of its candidates; this notebook keeps one fixed model so that
# the runtimes are compared on the same file.)

# %% tags=["parameters"]
import os
SMOKE = os.environ.get("EDGELAB_SMOKE", "0").lower() not in ("", "0", "false", "no")
NOTEBOOK = "05_edge_runtimes"

# %%
import gc
import time

import numpy as np
import torch
from IPython.display import display

from edgelab import (data, edge, evaluation, figures, latency, measure, memory, models, paths, pi,
                     plots, report, runtime, tables)
from edgelab.records import find

memory.setup_notebook()
T_START = time.time()

MODEL = "student-pruned25-kd-s0"   # on 06's frontier (see above)
EVAL_IMAGES = 500 if SMOKE else None     # accuracy on the full 10k test images at defaults
CALIBRATION = 128 if SMOKE else 512
LATENCY_S = 0.2 if SMOKE else 1.0
THREADS = 1                              # the Pi's budget, as in 05_deploy_pi and 06
PORTABLE_IMAGES = 3 if SMOKE else 10     # the undelegated program is timed on a few images only
ARM64_IMAGES = 20 if SMOKE else 100
BATCHES = (1,) if SMOKE else edge.BATCHES   # smoke: the b1 file only (batch 64 runs it 64 times)
WORK = paths.cache_dir(NOTEBOOK)

model = models.load_checkpoint(MODEL).eval()
example = data.tensors("val", limit=2)[0]
calibration = data.calibration_set(CALIBRATION)
x_test, y_test = data.tensors("test", limit=EVAL_IMAGES)
with torch.inference_mode():
    reference = evaluation.predict_logits(model, x_test)    # PyTorch fp32: what each file must match
print(f"{MODEL}: {sum(p.numel() for p in model.parameters()):,} parameters; PyTorch fp32 "
      f"{100 * float((reference.argmax(1) == y_test).float().mean()):.2f} % on "
      f"{len(y_test):,} test images")

# %% [markdown]
# The ExecuTorch bundle (section 6) runs its model through a small C++ program that its
# `predict.py` compiles once with g++ and then caches. The next cell builds it now, on this machine
# and on the emulated Pi, before the runtimes load: under emulation the compiler takes about
# 0.4 GB, and built later it would add to this notebook's peak memory.

# %%
runner = pi.emulate.build_executorch_runner()
for side, res in runner.items():
    if res is None:
        print(f"{side}: no emulated Pi here, nothing built")
    else:
        print(f"{side}: {'built' if res['built'] else 'already built (cached)'} in "
              f"{res['seconds']:.1f} s")

# %% [markdown]
# ## 1 · Six files from one model
#
# Each runtime gets the fp32 model and an int8 version quantized its own way, on the same
# calibration images. ExecuTorch and LiteRT write one file per batch size (why: section 2): `-b1`
# is what ships, `-b64` exists to time batch 64. Both come from one quantized graph, so they hold
# the same scales. The cell times each conversion.

# %%
REDUCE_RANGE = runtime.u8s8_saturates()
isa = runtime.cpu_isa()
print(f"this CPU: {isa['machine']}, VNNI {isa['vnni']}, flags {', '.join(isa['flags']) or '-'}: "
      f"ONNX Runtime int8 with {'7-bit weights (reduce_range)' if REDUCE_RANGE else '8-bit weights'}")
files, export_s = {}, {}
for rt in ("onnxruntime", "executorch", "litert"):
    for precision in ("fp32", "int8"):
        key, t0 = f"{rt}-{precision}", time.perf_counter()
        if rt == "onnxruntime":   # int8: quantize the fp32 file just written
            files[key] = {1: runtime.export_onnx(model, WORK / "model-fp32.onnx", example)
                          if precision == "fp32" else runtime.ort_static(
                              files["onnxruntime-fp32"][1], WORK / "model-int8.onnx", calibration,
                              reduce_range=REDUCE_RANGE)}
        else:
            files[key] = edge.export(model, WORK / f"model-{rt}-{precision}", rt, example,
                                     calibration=calibration if precision == "int8" else None,
                                     batches=BATCHES)
        export_s[key] = time.perf_counter() - t0
        print(f"{key:18s} {export_s[key]:5.1f} s  "
              + ", ".join(f"b{b}: {p.name} ({p.stat().st_size / 1e3:.0f} kB)"
                          for b, p in files[key].items()))

# %%
# NBVAL_CHECK_OUTPUT
# the input each shipped int8 file declares, read from the file: ONNX keeps the batch free (N),
# the other two hold batch 1; LiteRT's full-integer file takes int8
ET_DTYPES = {6: "float32", 1: "int8", 0: "uint8"}     # ExecuTorch's ScalarType codes
for key in ("onnxruntime-int8", "executorch-int8", "litert-int8"):
    if key.startswith("onnx"):
        inp = runtime.session(files[key][1], threads=THREADS).get_inputs()[0]
        shape, kind = [d if isinstance(d, int) else "N" for d in inp.shape], inp.type
    elif key.startswith("litert"):
        inp = edge.session({1: files[key][1]}, threads=THREADS).programs[1].inp
        shape, kind = [int(d) for d in inp["shape"]], inp["dtype"].__name__
    else:
        meta = edge.session({1: files[key][1]}, threads=THREADS).programs[1].method.metadata
        info = meta.input_tensor_meta(0)
        shape, kind = list(info.sizes()), ET_DTYPES.get(info.dtype(), f"ScalarType {info.dtype()}")
    print(f"{key:17s} input {shape} {kind}")

# %% [markdown]
# ## 2 · Fixed batch sizes, and why
#
# An ONNX file can leave the batch dimension free. ExecuTorch can export a *bounded* dynamic batch
# (`torch.export.Dim("batch", max=64)`), and the pinned litert-torch's `convert()` accepts
# `dynamic_shapes`. The cell
# asks each for a program that accepts 1 to 64 images and feeds it 64.

# %%
dynamic_errors = {rt: edge.dynamic_batch_error(model, example, rt)
                  for rt in ("executorch", "litert")}
for rt, err in dynamic_errors.items():
    print(f"{rt}: {err or 'a batch of 64 ran'}")

# %% [markdown]
# Where the cell prints an error, that runtime's dynamic batch did not work for this model in the
# pinned versions, and this workbook ships the batch-1 file and times batch 64 from a second file.
# - litert-torch lowers each operator through a JAX function, and JAX needs concrete shapes: its
#   maintainers describe the limit in
#   [litert-torch#1024](https://github.com/google-ai-edge/litert-torch/pull/1024) (which makes
#   `convert()` refuse dynamic shapes outright and points to the tracking issue
#   [#870](https://github.com/google-ai-edge/litert-torch/issues/870)), and users
#   hit it on CNNs in [#685](https://github.com/google-ai-edge/litert-torch/issues/685).
# - For ExecuTorch we found no report that explains the input size its memory planner chose; the
#   nearest is [executorch#7717](https://github.com/pytorch/executorch/issues/7717), an "Attempted
#   to resize a bounded tensor" error (what ExecuTorch also logs here, to the terminal) on a model
#   exported with dynamic shapes.
#
# A learner who needs a free batch can keep ONNX Runtime, or retry with a newer release.

# %% [markdown]
# ## 3 · Accuracy, bytes and speed, each measured from the file
#
# `measure` treats every runtime alike: the `edge` sessions answer ONNX Runtime's interface, so
# accuracy comes from the file on the test set, bytes are the shipped file's, latency is the median
# at batch 1 and 64 with `THREADS` threads. Then the six are timed again together, in interleaved rounds,
# so that a slow spell of this shared machine lands on all of them.
#
# **Threads.** ONNX Runtime and LiteRT take a thread count per session. ExecuTorch's Python runtime
# runs XNNPACK on one process-wide thread pool, which Python can resize only through
# `_unsafe_reset_threadpool`
# ([`portable_lib.py`](https://github.com/pytorch/executorch/blob/main/extension/pybindings/portable_lib.py));
# the cell sets it and prints the size it reports.

# %%
sessions = {key: (runtime.session(p[1], threads=THREADS) if key.startswith("onnxruntime")
                  else edge.session(p, threads=THREADS)) for key, p in files.items()}
print("ExecuTorch thread pool:", edge.executorch_threads(), "thread(s)")
records = []
for key, sess in sessions.items():
    rec = measure.measure(sess, key, tags=key.split("-"), limit=EVAL_IMAGES, artifact=files[key][1],
                          params=sum(p.numel() for p in model.parameters()),
                          min_run_time=LATENCY_S, threads=THREADS)
    logits = evaluation.predict_logits(sess, x_test)
    rec["max_abs_logit_diff_vs_torch"] = float((logits - reference).abs().max())
    rec["top1_agreement_vs_torch"] = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    rec["export_seconds"] = round(export_s[key], 1)
    rec["files"] = {f"b{b}": p.name for b, p in files[key].items()}
    rec["batch"] = ("any (dynamic batch axis)" if key.startswith("onnxruntime")
                    else "fixed: the b1 file ships, the b64 file times batch 64")
    rec["checkpoint"] = MODEL
    records.append(rec)
latency.remeasure_latency(records, sessions, rounds=3 if SMOKE else 5, min_run_time=LATENCY_S,
                          threads=THREADS)
print(f"timed: {records[0]['latency_protocol']}")

# %% [markdown]
# ## 4 · Without the delegate: ExecuTorch's portable operators
#
# The XNNPACK partitioner hands the operators XNNPACK supports to its kernels. Without it, the
# program runs ExecuTorch's *portable* operators, its reference kernels in plain C++. The cell times
# that program at batch 1 on a few images only, so the ratio is rough: a mean of a few calls
# against the delegated program's interleaved median.

# %%
portable = edge.session(edge.export_pte(model, WORK / "model-portable-b1.pte", example[:1],
                                        delegate=False), threads=THREADS)
x_few = x_test[:PORTABLE_IMAGES].numpy()
portable.run(None, {"x": x_few[:1]})    # warm-up
t0 = time.perf_counter()
for i in range(len(x_few)):
    portable.run(None, {"x": x_few[i:i + 1]})
portable_ms = (time.perf_counter() - t0) / len(x_few) * 1e3
delegated_ms = find(records, "executorch-fp32")["latency_b1_ms"]
print(f"ExecuTorch fp32, batch 1: portable operators {portable_ms:.1f} ms per image "
      f"({len(x_few)} images), XNNPACK delegate {delegated_ms:.2f} ms: "
      f"about {portable_ms / delegated_ms:.0f}x slower without the delegate")

# %% [markdown]
# ## 5 · The comparison
#
# For each file: accuracy with its binomial standard error, the accuracy difference from ONNX
# Runtime's file of the same precision (paired: the same images), bytes as shipped, latency, and
# agreement with PyTorch's own fp32 logits on every test image. **Pi install** is the bytes of the
# aarch64 wheels each runtime's bundle installs (`requirements.txt` of its bundle, downloaded by
# `make pi-rootfs`); ExecuTorch's bundle also needs Debian's g++ once, to build its runner
# (section 6).

# %%
wheels = pi.rootfs.wheel_bytes()
for rec in records:
    rec["pi_wheel_bytes"] = wheels.get(rec["name"].split("-")[0])
rows = []
for rec in records:
    base = find(records, f"onnxruntime-{rec['name'].split('-')[1]}")
    delta, se = tables.paired_delta(rec, base)
    acc_se = 100 * figures.accuracy_se(rec["accuracy"], rec["test_images"])
    rows.append([rec["name"], f"{100 * rec['accuracy']:.2f} ±{acc_se:.2f}",
                 "-" if rec is base else f"{delta:+.2f}" + (f" ±{se:.2f}" if se is not None
                                                            else ""),
                 f"{rec['bytes'] / 1e3:.0f} kB", f"{rec['latency_b1_ms']:.3f}",
                 f"{rec['latency_b64_ms']:.2f}", f"{rec['max_abs_logit_diff_vs_torch']:.2g}",
                 f"{100 * rec['top1_agreement_vs_torch']:.2f} %",
                 f"{rec['pi_wheel_bytes'] / 1e6:.0f} MB" if rec["pi_wheel_bytes"] else "-"])
comparison = tables.Table(["file", "accuracy %", "Δ vs ONNX Runtime, pt", "bytes", "b1 ms",
                           "b64 ms", "max |logit − torch|", "top-1 = torch", "Pi install"],
                          rows, baseline_rows={0, 1})
display(comparison)

# %%
fig = plots.cost_figure(records, costs=("bytes", "latency_b1_ms"),
                        title=f"{MODEL} in three runtimes (±1 SE, {THREADS} thread)")
figures.show(fig)

# %%
int8 = [r for r in records if "int8" in r["tags"]]
fastest = min(int8, key=lambda r: r["latency_b1_ms"])
smallest = min(int8, key=lambda r: r["bytes"])
closest = max(int8, key=lambda r: r["top1_agreement_vs_torch"])
print(f"int8, batch 1: fastest here {fastest['name']} ({fastest['latency_b1_ms']:.3f} ms), "
      f"smallest file {smallest['name']} ({smallest['bytes'] / 1e3:.0f} kB), most top-1 "
      f"agreement with PyTorch fp32 {closest['name']} "
      f"({100 * closest['top1_agreement_vs_torch']:.2f} %)")
print(f"largest int8 accuracy gap between two runtimes: "
      f"{100 * (max(r['accuracy'] for r in int8) - min(r['accuracy'] for r in int8)):.2f} pt")

# %% [markdown]
# Read the latency columns as ratios on this x86 machine, not as Pi speed: all three run XNNPACK or
# MLAS kernels whose Arm versions differ from their x86 ones. The fp32 files agree with PyTorch to
# float rounding; the int8 ones differ by their quantization, each with its own quantizer and
# calibration: the max |logit − torch| and top-1 = torch columns show how far each moved from
# PyTorch, and Δ compares its accuracy with ONNX Runtime's file of the same precision.

# %% [markdown]
# ## 6 · Each runtime's bundle on an emulated Pi 4 and Pi 5
#
# `pi.bundle.build` takes any of the three files and picks the runtime from its suffix; the
# bundle's `predict.py` keeps one preprocessing path and one command line for all three, and its
# `requirements.txt` pins that runtime's aarch64 wheels. Each int8 bundle is tried on the emulated
# Cortex-A72 (Pi 4: Armv8.0, no dot product) and Cortex-A76 (Pi 5: Armv8.2 with dot product and
# fp16), from one root filesystem where only `QEMU_CPU` changes (05_deploy_pi explains the
# emulation).
# QEMU's A72 model has the crypto extensions (`aes`, `pmull`, `sha1`, `sha2`) that the Pi 4's
# BCM2711 lacks, so the feature lines below show them
# ([Raspberry Pi's processor docs](https://www.raspberrypi.com/documentation/computers/processors.html)).

# %%
del sessions, portable   # timing is done; from here the emulated Pi's processes add to the peak
gc.collect()
available, how = pi.emulate.available()
arm = {}
for rt in ("onnxruntime", "litert", "executorch"):
    rec = find(records, f"{rt}-int8")
    bundle = pi.bundle.build(files[f"{rt}-int8"][1], WORK / f"bundle-{rt}", name=f"{MODEL}-int8",
                             accuracy=rec["accuracy"], test_images=rec["test_images"],
                             notes=f"Built by notebooks/{NOTEBOOK}.ipynb ({rt}).")
    rec["bundle"] = {"runtime": rt, "files": sorted(pi.bundle.check(bundle)), "arm64_by_cpu": {}}
    if not available:
        continue
    for board, cpu in pi.emulate.PI_CPUS.items():
        try:
            res = pi.emulate.verify(bundle, images=ARM64_IMAGES, qemu_cpu=cpu)
        except RuntimeError as e:   # the bundle's predict.py failed on the emulated Pi
            last = str(e).strip().splitlines()[-1]
            res = {"match": False, "error": last, "qemu_cpu": cpu}
            print(f"{board} ({cpu}), {rt}: predict.py FAILED: {last}")
        else:
            print(pi.emulate.summary(res))
        rec["bundle"]["arm64_by_cpu"][cpu] = arm.setdefault(rt, {})[cpu] = res
if not available:
    print("The arm64 check cannot run here:", how)

# %%
if available:
    for board, cpu in pi.emulate.PI_CPUS.items():
        res = next((r[cpu] for r in arm.values() if "cpu" in r[cpu]), None)
        if res is None:
            print(f"{board} ({cpu}): no bundle ran, so no features were read")
            continue
        c = res["cpu"]
        print(f"{board} ({cpu}) HWCAP: {' '.join(c['features'])}\n"
              f"  dot product {c['dotprod']}, fp16 {c['fp16']}, LSE atomics {c['atomics']}, "
              f"SVE {c['sve']}")
    litert_said = {r.get("stderr", "") for r in arm.get("litert", {}).values()} - {""}
    print("LiteRT's stderr (both cores):", "; ".join(sorted(litert_said)) or "nothing")

# %% [markdown]
# **Which kernels?** None of the three runtimes reports the Arm kernels it picks. LiteRT says only
# that it created its XNNPACK delegate (above). XNNPACK chooses its microkernels at start-up from
# the CPU's features, for example its dot-product int8 kernels only where `asimddp` is present
# ([`hardware-config.c`](https://github.com/google/XNNPACK/blob/master/src/configs/hardware-config.c)),
# and ONNX Runtime's MLAS does the same in
# [`platform.cpp`](https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/mlas/lib/platform.cpp).
#
# **ExecuTorch on the Pi.** Its Python runtime imports torch before its bindings
# (`portable_lib.py`, linked above), and its aarch64 bindings link libtorch; PyPI's aarch64 torch
# 2.14.1 is a CUDA build, which does not import without NVIDIA's CUDA wheels (the `nvidia-*`
# entries of its `requires_dist` in [PyPI's JSON for it](https://pypi.org/pypi/torch/2.14.1/json)). The executorch wheel
# also ships its C++ runtime as shared libraries with their headers, and those need no torch. So
# the ExecuTorch bundle carries a short C++ program,
# [`et_runner.cpp`](../edgelab/pi/template/et_runner.cpp), built on ExecuTorch's
# [`Module` API](https://docs.pytorch.org/executorch/stable/extension-module.html). On its first
# run, `predict.py` compiles it with the Pi's own g++ against the installed wheel, then streams the
# preprocessed images to it through a pipe. The built program is kept in `~/.cache/edgelab-pi/`
# (of the root filesystem, on the emulated Pi), so only a first run builds it; this notebook built
# it near its start (the times printed there). The cell below prints what predict.py said on each
# core and how long each emulated run took.

# %%
for rt, total in sorted(wheels.items(), key=lambda kv: kv[1]):
    print(f"{rt:12s} bundle: {total / 1e6:6.0f} MB of aarch64 wheels (Python 3.11)")
for cpu, res in arm.get("executorch", {}).items():
    said = res.get("stderr") or res.get("error") or "nothing"
    seconds = f"{res['emulated_seconds']:.0f} s emulated" if "emulated_seconds" in res else "failed"
    print(f"ExecuTorch bundle on {cpu}: {seconds}; predict.py said: {said}")

# %% [markdown]
# ## 7 · Which to pick
#
# - **ONNX Runtime** is what this workbook ships by default: one file for every batch size, the
#   smallest change from an exported PyTorch model, aarch64 wheels on PyPI; section 6 checks its
#   bundle on both emulated Pis.
# - **LiteRT** needs its converter only on the build machine (litert-torch, with jax); the Pi gets
#   the interpreter wheel and a few small dependencies (its bundle's `requirements.txt`). Its full-integer file takes int8 in and out, which suits
#   integer-only accelerators; its files have a fixed batch here.
# - **ExecuTorch** exports straight from `torch.export` with PyTorch's own quantizers, and its
#   runtime is built for C++ applications. On a Pi that means a small C++ runner, here built once
#   on the Pi itself, with no torch there. Its Python runtime would need libtorch, which PyPI
#   offers for aarch64 only as a CUDA build.
#
# The tables above say which one was fastest and smallest *here*; on a Pi, time your bundle with
# `python predict.py --benchmark` (its README lists published Pi figures for scale).

# %%
elapsed = time.time() - T_START
print(f"notebook body: {elapsed:.0f} s")
if SMOKE:
    print("(smoke mode: small sizes, these figures are not the claims)")
path = report.write_notebook_results(NOTEBOOK, records, smoke=SMOKE)
