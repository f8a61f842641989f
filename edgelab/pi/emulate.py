"""A Raspberry Pi's CPU without a Pi: arm64 programs run in the root filesystem (edgelab.pi.rootfs)
under qemu user-mode emulation of the Pi 4's core (``QEMU_CPU=cortex-a72``) or the Pi 5's
(``cortex-a76``), with the /proc/cpuinfo that core's kernel would write and its HWCAP bits
decoded. ``verify`` runs a bundle's own predict.py there and compares it with x86.

Emulated time says nothing about a Pi's speed and is never reported as such.
``python -m edgelab.pi.emulate verify [BUNDLE] [--cpu cortex-a76]`` runs the check from a shell.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import TEMPLATE
from . import bundle as pi_bundle
from .. import paths
from .rootfs import (BINFMT_CONF, SIGILL_PIN, SIGILL_SITE, SITE, SITES, SUITE,
                     Arm64Unavailable, binfmt_registered, ensure_binfmt, rootfs_ready)

__all__ = ["QEMU_CPU", "PI_CPUS", "MIDR", "HWCAP_NAMES", "PROBE", "HOW_TO_ENABLE", "available",
           "chroot_run", "emulated_cpuinfo", "cpu_features", "illegal_instruction_check",
           "verify", "verify_pis", "summary", "build_executorch_runner"]

QEMU_CPU = "cortex-a72"            # the Raspberry Pi 4's core
PI_CPUS = {"Raspberry Pi 4": "cortex-a72",   # BCM2711: Armv8.0-A, no dot product, no fp16
           "Raspberry Pi 5": "cortex-a76"}   # BCM2712: Armv8.2-A with dot product and fp16
# MIDR fields (variant, part, revision) of the two boards' cores, as their /proc/cpuinfo shows:
# BCM2711's Cortex-A72 r0p3 and BCM2712's Cortex-A76 r4p1.
MIDR = {"cortex-a72": (0x0, 0xd08, 3), "cortex-a76": (0x4, 0xd0b, 1)}

PROBE = ("import ctypes, platform, sys; hw = ctypes.CDLL(None).getauxval(16); "
         "print(platform.machine(), sys.version.split()[0], hw)")

# AT_HWCAP bits on arm64 (linux/arch/arm64/include/uapi/asm/hwcap.h), as /proc/cpuinfo names them
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
               "jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc "
               "flagm ssbs sb paca pacg").split()

HOW_TO_ENABLE = (
    "The arm64 check needs Linux, root, and the emulated Pi set up once: `sudo make pi-rootfs` "
    "(installs qemu-user-static and debootstrap with apt, registers qemu's aarch64 handler, "
    "builds an arm64 Debian root filesystem under ~/.cache/edgelab/: minutes, once, about "
    "400 MB). Binder and other containers without root cannot run it; `make test` runs it on "
    "every CI machine.")


def available(root=None) -> tuple[bool, str]:
    """(True, '') when the emulated Pi can run here, else (False, why and how to enable it).
    ``root``: the root filesystem, default edgelab.paths.pi_rootfs(SUITE), as everywhere here."""
    root = Path(root or paths.pi_rootfs(SUITE))
    if not sys.platform.startswith("linux"):
        return False, f"not Linux ({sys.platform}). {HOW_TO_ENABLE}"
    if os.geteuid() != 0:
        return False, f"not running as root. {HOW_TO_ENABLE}"
    if not rootfs_ready(root):
        return False, f"no arm64 root filesystem at {root}. {HOW_TO_ENABLE}"
    if not (binfmt_registered() or BINFMT_CONF.is_file()):
        return False, f"qemu-user-static is not installed. {HOW_TO_ENABLE}"
    return True, ""


def _ready(root) -> Path:
    root = Path(root or paths.pi_rootfs(SUITE))
    ok, why = available(root)
    if not ok:
        raise Arm64Unavailable(why)
    ensure_binfmt()
    return root


def _check_cpu(qemu_cpu: str) -> str:
    if qemu_cpu not in MIDR:
        raise ValueError(f"qemu_cpu must be one of {sorted(MIDR)} (the Raspberry Pi 4's and 5's "
                         f"cores), got {qemu_cpu!r}")
    return qemu_cpu


def chroot_run(root: Path, argv: list[str], timeout: float, cpuinfo: Path | None = None,
               qemu_cpu: str = QEMU_CPU, site: str = SITE) -> subprocess.CompletedProcess:
    """Run an arm64 command in ``root`` under qemu (``QEMU_CPU=qemu_cpu``, Python packages from
    ``site``, one of rootfs.SITES), with the host's /proc
    and /sys bind-mounted (and ``cpuinfo`` over /proc/cpuinfo) in a private mount namespace:
    the mounts vanish with the process, so nothing is left mounted inside the cached tree."""
    script = ('mount --bind /proc "$1/proc" && mount --bind /sys "$1/sys" && '
              '{ [ -z "$2" ] || mount --bind "$2" "$1/proc/cpuinfo"; } && '
              'r="$1" && shift 2 && exec chroot "$r" "$@"')
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "QEMU_CPU": _check_cpu(qemu_cpu), "PYTHONPATH": "/" + site, "LANG": "C.UTF-8",
           "HOME": "/root", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           "sh", str(root), str(cpuinfo or ""), *argv], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _possible_cpus() -> list[int]:
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def emulated_cpuinfo(hwcap: int, qemu_cpu: str = QEMU_CPU) -> str:
    """/proc/cpuinfo as an arm64 kernel would write it for the emulated core (its MIDR, the
    features qemu reports in AT_HWCAP), one entry per host CPU.

    qemu 7.2 (Debian 12) passes the host's x86 /proc/cpuinfo through, on which onnxruntime's
    cpuinfo library crashes (SIGSEGV) once /sys is mounted too; newer qemu writes an entry like
    this itself."""
    features = " ".join(n for i, n in enumerate(HWCAP_NAMES) if hwcap >> i & 1)
    variant, part, revision = MIDR[_check_cpu(qemu_cpu)]
    entry = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
             f"CPU architecture: 8\nCPU variant\t: {variant:#x}\nCPU part\t: {part:#05x}\n"
             f"CPU revision\t: {revision}\n\n")
    return "".join(entry.format(i=i, f=features) for i in _possible_cpus())


def cpu_features(hwcap: int) -> dict:
    """The HWCAP bits (asm/hwcap.h) by name, and the three that separate the Pis' cores: the
    Cortex-A72 is Armv8.0 (no LSE atomics, bit 8; no dot product, bit 20; no fp16, bits 9-10),
    the Cortex-A76 Armv8.2 with all three; neither has SVE (bit 22), which qemu's default
    CPU has."""
    return {"features": [n for i, n in enumerate(HWCAP_NAMES) if hwcap >> i & 1],
            "atomics": bool(hwcap >> 8 & 1), "dotprod": bool(hwcap >> 20 & 1),
            "fp16": bool(hwcap >> 9 & 1 and hwcap >> 10 & 1), "sve": bool(hwcap >> 22 & 1)}


def _probe(root: Path, qemu_cpu: str, work: Path) -> tuple[str, str, int, Path]:
    """Start python3 under the emulated CPU; write the /proc/cpuinfo that CPU's kernel would."""
    probe = chroot_run(root, ["/usr/bin/python3", "-c", PROBE], timeout=300, qemu_cpu=qemu_cpu)
    if probe.returncode != 0:
        raise RuntimeError(f"python3 does not start under qemu ({qemu_cpu}) in {root}:\n"
                           f"{probe.stderr[-2000:]}")
    machine, py_version, hwcap = probe.stdout.split()
    (work / "cpuinfo").write_text(emulated_cpuinfo(int(hwcap), qemu_cpu))
    return machine, py_version, int(hwcap), work / "cpuinfo"


_ORT_PROBE = """import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
x = np.zeros((1,) + tuple(d if isinstance(d, int) else 1 for d in s.get_inputs()[0].shape[1:]),
             np.float32)
s.run(None, {s.get_inputs()[0].name: x})
print(ort.__version__)
"""


def illegal_instruction_check(model_onnx, qemu_cpu: str = QEMU_CPU, root=None) -> dict:
    """Run one inference of ``model_onnx`` (any input shape) under the emulated CPU twice: with
    the bundle's pinned onnxruntime, and with SIGILL_PIN, a release built with instructions the
    Pi 4 lacks. Returns {"pinned": exit code, "old": exit code, "old_version", "sigill": bool};
    -4 is SIGILL. The test that the arm64 check can fail: on the emulated A72 the old one must
    die."""
    root = _ready(root)
    if not (root / SIGILL_SITE).is_dir():
        raise Arm64Unavailable(f"{root / SIGILL_SITE} is missing: rebuild with `make pi-rootfs`")
    work = Path(tempfile.mkdtemp(dir=root / "tmp", prefix="edgelab-sigill-"))
    try:
        shutil.copyfile(model_onnx, work / "model.onnx")
        (work / "probe.py").write_text(_ORT_PROBE)
        *_, cpuinfo = _probe(root, qemu_cpu, work)
        inside = "/" + str(work.relative_to(root))
        codes = {}
        for key, site in (("pinned", "/" + SITE), ("old", "/" + SIGILL_SITE)):
            run = chroot_run(root, ["/usr/bin/python3", f"{inside}/probe.py", site,
                                    f"{inside}/model.onnx"], timeout=600, cpuinfo=cpuinfo,
                             qemu_cpu=qemu_cpu)
            codes[key] = run.returncode
            codes[f"{key}_stderr"] = run.stderr.strip()[-300:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"qemu_cpu": qemu_cpu, "pinned": codes["pinned"], "old": codes["old"],
            "old_version": SIGILL_PIN.split("==")[1], "sigill": codes["old"] == -4,
            "old_stderr": codes["old_stderr"], "pinned_stderr": codes["pinned_stderr"]}


def verify(bundle=None, images: int = 300, root=None, threads: int = 1,
           timeout: float = 1200, qemu_cpu: str = QEMU_CPU, pixels=None) -> dict:
    """Run the bundle's own predict.py on ``images`` image files in the arm64 root filesystem
    under qemu with ``QEMU_CPU=qemu_cpu`` (cortex-a72, the Pi 4's core, or cortex-a76, the Pi
    5's), and compare its predictions with the same predict.py (its preprocessing and its model
    call, pi.bundle.predict_here) on this x86 machine, on the same files. The files hold
    ``pixels`` (uint8, (N, H, W) or (N, H, W, 3)) when given, else pi.bundle.sample_pixels for the bundle's input (Fashion-MNIST's test images for
    1x28x28). ``bundle``: default build/pi_bundle (edgelab.paths.bundle_dir()).

    The bundle's runtime (labels.json) picks the site folder its requirements were installed in
    (rootfs.SITES). Returns {"images", "mismatches", "match", "max_abs_logit_diff", "machine",
    "runtime", "runtime_version", "python", "cpu": {...}, "emulated_seconds"}; raises
    Arm64Unavailable (with how to enable it) when this machine cannot emulate, RuntimeError when
    predict.py fails under emulation (its stderr in the message).
    ``emulated_seconds`` is the wall time under emulation on this machine: not a Pi's time."""
    bundle = Path(bundle or paths.bundle_dir())
    if pixels is None and images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    files_in_bundle = tuple(pi_bundle.check(bundle))
    root = _ready(root)
    meta = pi_bundle.read_meta(bundle)
    spec, site = meta["input"], SITES[meta["runtime"]]
    if not (root / site).is_dir():
        raise Arm64Unavailable(f"{root / site} is missing: rebuild with `make pi-rootfs`")
    pixels = pi_bundle.sample_pixels(spec, images) if pixels is None else np.asarray(pixels)
    work = Path(tempfile.mkdtemp(dir=root / "tmp", prefix="edgelab-verify-"))
    try:
        for f in files_in_bundle:
            shutil.copyfile(bundle / f, work / f)
        files = pi_bundle.write_pngs(work / "images", pixels)
        reference = pi_bundle.predict_here(bundle, files)
        inside = "/" + str(work.relative_to(root))
        machine, py_version, hwcap, cpuinfo = _probe(root, qemu_cpu, work)
        t0 = time.perf_counter()
        run = chroot_run(root, ["/usr/bin/python3", f"{inside}/predict.py", "--json",
                                "--threads", str(threads), f"{inside}/images"], timeout=timeout,
                         cpuinfo=cpuinfo, qemu_cpu=qemu_cpu, site=site)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if run.returncode != 0:
        raise RuntimeError(f"the {meta['runtime']} bundle's predict.py failed under arm64 "
                           f"emulation ({qemu_cpu}, exit {run.returncode}):\n"
                           f"{run.stderr[-3000:]}")
    out = json.loads(run.stdout)
    preds = out["predictions"]
    if len(preds) != len(files):
        raise RuntimeError(f"predict.py returned {len(preds)} predictions for {len(files)} images")
    arm_logits = np.array([p["logits"] for p in preds], dtype=np.float32)
    mismatches = int((np.array([p["index"] for p in preds]) != reference.argmax(1)).sum())
    return {
        "images": len(files), "mismatches": mismatches, "match": mismatches == 0,
        "max_abs_logit_diff": float(np.abs(arm_logits - reference).max()),
        "machine": out["machine"], "runtime": out["runtime"],
        "runtime_version": out["runtime_version"], "python": py_version,
        "cpu": {"qemu_cpu": qemu_cpu, "probe_machine": machine, **cpu_features(hwcap)},
        "stderr": run.stderr.strip(),
        "emulated_seconds": seconds,
    }


def build_executorch_runner(root=None, timeout: float = 900) -> dict:
    """The ExecuTorch bundle's C++ runner built now, the way its predict.py builds it on first use
    (the template's build_runner, cached by the source's bytes): on x86 for predict_here, and in
    the root filesystem under emulation when it is there. A notebook calls this before its models
    load, so the compiler (about 0.4 GB under qemu) does not add to the kernel's peak later.
    Returns {"x86": {...}, "arm64": {...} or None}, each with "built" (False: it was cached)
    and "seconds"."""
    predict = pi_bundle.load_predict()
    out = {}
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()) as said:
        predict.build_runner()
    out["x86"] = {"built": "building" in said.getvalue(),
                  "seconds": time.perf_counter() - t0}
    ok, _ = available(root)
    if not ok:
        out["arm64"] = None
        return out
    root = _ready(root)
    work = Path(tempfile.mkdtemp(dir=root / "tmp", prefix="edgelab-runner-"))
    try:
        for f in ("predict.py", "et_runner.cpp"):
            shutil.copyfile(TEMPLATE / f, work / f)
        inside = "/" + str(work.relative_to(root))
        t0 = time.perf_counter()
        run = chroot_run(root, ["/usr/bin/python3", "-c", f"import sys; sys.path.insert(0, "
                                f"{inside!r}); import predict; predict.build_runner()"],
                         timeout=timeout, site=SITES["executorch"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if run.returncode != 0:
        raise RuntimeError(f"building ExecuTorch's runner under arm64 emulation failed:\n"
                           f"{run.stderr[-3000:]}")
    out["arm64"] = {"built": "building" in run.stderr, "seconds": time.perf_counter() - t0}
    return out


def verify_pis(bundle=None, images: int = 300, root=None,
               pixels=None) -> dict[str, dict]:
    """``verify`` on each Raspberry Pi's core in turn (PI_CPUS), keyed by the QEMU CPU."""
    return {cpu: verify(bundle, images, root, qemu_cpu=cpu, pixels=pixels)
            for cpu in PI_CPUS.values()}


def summary(res: dict) -> str:
    """One line of a ``verify`` result: which core, and how the predictions compare."""
    board = next((b for b, c in PI_CPUS.items() if c == res["cpu"]["qemu_cpu"]), "emulated")
    return (f"{board} ({res['cpu']['qemu_cpu']}), {res['runtime']} {res['runtime_version']}: "
            f"{res['images'] - res['mismatches']} of {res['images']} predictions equal x86's, "
            f"largest logit difference {res['max_abs_logit_diff']:.1e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgelab.pi.emulate",
                                description="run a bundle's predict.py on the emulated Pi CPU")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="run a bundle's predict.py on the emulated Pi CPU")
    v.add_argument("bundle", nargs="?", type=Path, help="default: build/pi_bundle")
    v.add_argument("--images", type=int, default=300)
    v.add_argument("--root", type=Path, help="default: edgelab.paths.pi_rootfs(SUITE)")
    v.add_argument("--cpu", choices=sorted(PI_CPUS.values()), default=QEMU_CPU,
                   help="the emulated core: cortex-a72 (Pi 4, the default) or cortex-a76 (Pi 5)")
    args = p.parse_args(argv)
    try:
        res = verify(args.bundle, args.images, args.root, qemu_cpu=args.cpu)
    except (Arm64Unavailable, pi_bundle.BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=2))
    return 0 if res["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
