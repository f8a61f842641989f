"""Set-up of the emulated Raspberry Pi CPU that edgelab.deploy.verify_arm64 runs bundles on:
an arm64 Debian root filesystem (debootstrap, Debian's own packages) with the bundle's pinned
onnxruntime, numpy and Pillow from their aarch64 wheels on PyPI, run under qemu user-mode
emulation of the Pi 4's core (QEMU_CPU=cortex-a72) or the Pi 5's (cortex-a76): one root
filesystem, only the CPU model changes. Beside the pinned packages it holds, in a site folder of
its own, an onnxruntime release built with instructions the Pi 4 lacks: the proof that the
emulated A72 rejects what a real Pi 4 would.

`make pi-rootfs` = ``python -m edgelab.pi_rootfs``: builds it once (minutes) under
``~/.cache/edgelab/``, then only re-checks qemu's binfmt handler, which the kernel forgets at
each boot. This module imports no torch, so that check takes a fraction of a second. It needs
Linux and root (apt, debootstrap, chroot, mounts, binfmt_misc).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["TEMPLATE", "SUITE", "PI_PYTHON", "QEMU_CPU", "DEFAULT_MIRROR", "ROOTFS", "STAMP",
           "SITE", "BINFMT", "BINFMT_CONF", "Arm64Unavailable", "rootfs_ready",
           "binfmt_registered", "ensure_binfmt", "debian_mirror", "build_rootfs", "remove_rootfs",
           "HOW_TO_ENABLE", "arm64_available", "chroot_run", "PROBE", "HWCAP_NAMES",
           "emulated_cpuinfo", "PI_CPUS", "MIDR", "SIGILL_PIN", "SIGILL_SITE"]

TEMPLATE = Path(__file__).resolve().parent / "pi_bundle"

SUITE = "bookworm"                 # Debian 12, what Raspberry Pi OS (64-bit) bookworm builds on
PI_PYTHON = "3.11"                 # its python3
QEMU_CPU = "cortex-a72"            # the Raspberry Pi 4's core
PI_CPUS = {"Raspberry Pi 4": "cortex-a72",   # BCM2711: Armv8.0-A, no dot product, no fp16
           "Raspberry Pi 5": "cortex-a76"}   # BCM2712: Armv8.2-A with dot product and fp16
# MIDR fields (variant, part, revision) of the two boards' cores, as their /proc/cpuinfo shows:
# BCM2711's Cortex-A72 r0p3 and BCM2712's Cortex-A76 r4p1.
MIDR = {"cortex-a72": (0x0, 0xd08, 3), "cortex-a76": (0x4, 0xd0b, 1)}
# A release reported to die with "Illegal instruction" on Pi 4 boards, and seen to do so here
# under QEMU_CPU=cortex-a72 (it runs under cortex-a76): installed apart, never on PYTHONPATH.
SIGILL_PIN = "onnxruntime==1.21.0"
SIGILL_SITE = "opt/site-sigill"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOTFS = Path(os.environ.get("EDGELAB_PI_ROOTFS") or
              Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
              / "edgelab" / f"pi-rootfs-{SUITE}-arm64")
STAMP = "opt/edgelab-rootfs.json"  # inside the root filesystem: written last, renamed with it
SITE = "opt/site"                  # the bundle's requirements, installed from PyPI's wheels
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")


class Arm64Unavailable(RuntimeError):
    """No arm64 emulation on this machine (no root filesystem, no qemu, not root)."""


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _requirements_hash() -> str:
    return hashlib.sha256((TEMPLATE / "requirements.txt").read_bytes()
                          + SIGILL_PIN.encode()).hexdigest()


def rootfs_ready(root=ROOTFS) -> bool:
    """The root filesystem is built and holds the bundle's current requirements."""
    stamp = Path(root) / STAMP
    try:
        meta = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("requirements_sha256") == _requirements_hash()
            and (Path(root) / "usr/bin/python3").exists())


def binfmt_registered() -> bool:
    entry = BINFMT / "qemu-aarch64"
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def ensure_binfmt() -> None:
    """Register qemu's aarch64 handler with the kernel if it is not (each boot forgets it):
    mount binfmt_misc, then write Debian's qemu-user-static rule to its register file."""
    if binfmt_registered():
        return
    if not BINFMT_CONF.is_file():
        raise Arm64Unavailable(f"{BINFMT_CONF} is missing: install qemu-user-static "
                               "(`apt-get install qemu-user-static`, or run `make pi-rootfs`)")
    _need_root("register qemu's aarch64 handler (binfmt_misc)")
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    rule = BINFMT_CONF.read_text().strip()
    try:
        (BINFMT / "register").write_text(rule + "\n")
    except OSError as e:
        if not binfmt_registered():   # EEXIST when it was registered but disabled
            raise Arm64Unavailable(f"could not register the aarch64 binfmt handler: {e}") from e
    if not binfmt_registered():
        (BINFMT / "qemu-aarch64").write_text("1\n")
    if not binfmt_registered():
        raise Arm64Unavailable("the aarch64 binfmt handler is registered but not enabled")


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Arm64Unavailable(f"to {what} this needs root (chroot, mounts, binfmt_misc): run it "
                               "as root or with sudo, e.g. `sudo make pi-rootfs`")


def debian_mirror(sources=None) -> str:
    """The Debian mirror this machine's apt uses ($EDGELAB_DEBIAN_MIRROR first), else
    deb.debian.org. Reads one-line (sources.list) and deb822 (.sources) files."""
    if os.environ.get("EDGELAB_DEBIAN_MIRROR"):
        return os.environ["EDGELAB_DEBIAN_MIRROR"]
    if sources is None:
        sources = [Path("/etc/apt/sources.list"),
                   *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in map(Path, sources):
        try:
            text = src.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if src.suffix == ".sources" and words[:1] == ["URIs:"]:
                uris = words[1:]
            elif words[:1] == ["deb"]:
                uris = [w for w in words[1:] if "://" in w][:1]
            else:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def _install_host_tools(log) -> None:
    missing = [pkg for tool, pkg in [("debootstrap", "debootstrap"),
                                     ("qemu-aarch64-static", "qemu-user-static")]
               if shutil.which(tool) is None]
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():
        missing.append("debian-archive-keyring")
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Arm64Unavailable(f"missing {', '.join(missing)} and no apt-get to install them")
    _need_root(f"install {', '.join(missing)}")
    log(f"installing {', '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts anything left mounted inside (debootstrap mounts /proc in
    its target) and never crosses into another file system."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def _install_site(root: Path, log) -> None:
    """The bundle's requirements.txt as aarch64 / CPython 3.11 wheels from PyPI (or from
    $EDGELAB_PI_WHEELS, the wheelhouse's aarch64 folder), installed on the host into
    ROOT/opt/site, and SIGILL_PIN into ROOT/opt/site-sigill (pip never runs under emulation);
    each replaced atomically."""
    t0 = time.perf_counter()
    for where, what in ((SITE, ["-r", str(TEMPLATE / "requirements.txt")]),
                        (SIGILL_SITE, ["--no-deps", SIGILL_PIN])):
        site, tmp = root / where, root / f"{where}.tmp"
        _remove_tree(tmp)
        offline = (["--no-index", "--find-links", os.environ["EDGELAB_PI_WHEELS"]]
                   if os.environ.get("EDGELAB_PI_WHEELS") else [])   # make wheelhouse's
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *offline,
                        "--disable-pip-version-check", "--no-cache-dir", "--target", str(tmp),
                        "--platform", "manylinux_2_27_aarch64",
                        "--platform", "manylinux_2_28_aarch64", "--python-version", PI_PYTHON,
                        "--implementation", "cp", "--only-binary=:all:", *what], check=True)
        _remove_tree(site)
        os.replace(tmp, site)
    log(f"pip: bundle requirements for aarch64 / Python {PI_PYTHON} in {SITE}, {SIGILL_PIN} in "
        f"{SIGILL_SITE} ({time.perf_counter() - t0:.0f} s)")


def _write_stamp(root: Path, seconds: float, mirror: str, what: str = "build") -> None:
    """The stamp: what was built, from where, for which requirements, how long it took."""
    try:
        meta = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        meta = {}
    meta.update({"suite": SUITE, "arch": "arm64", "mirror": mirror, "python": PI_PYTHON,
                 "requirements_sha256": _requirements_hash(), f"{what}_seconds": round(seconds, 1),
                 f"{what}_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    _atomic_write(root / STAMP, json.dumps(meta, indent=2) + "\n")


def build_rootfs(root=ROOTFS, mirror: str | None = None, log=print) -> Path:
    """The arm64 Debian root filesystem for verify_arm64, built once and cached.

    When it is there and current this only checks the binfmt handler (seconds). Otherwise:
    install qemu-user-static and debootstrap if missing, register the handler,
    ``debootstrap --arch=arm64 --variant=minbase --include=python3`` into a temporary folder
    next to ``root``, install the bundle's requirements, write the stamp, rename into place."""
    root = Path(root)
    _install_host_tools(log)
    ensure_binfmt()
    if rootfs_ready(root):
        return root
    _need_root("build the arm64 root filesystem")
    import fcntl

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # a second `make` waits, then finds it built
        if rootfs_ready(root):
            return root
        return _build_rootfs(root, mirror, log)


def _build_rootfs(root: Path, mirror: str | None, log) -> Path:
    mirror = mirror or debian_mirror()
    if (root / "usr/bin/python3").exists() and (root / STAMP).exists():
        log(f"{root}: requirements changed, reinstalling them")
        t0 = time.perf_counter()
        _install_site(root, log)
        _write_stamp(root, time.perf_counter() - t0, mirror, what="requirements")
        return root
    t0 = time.perf_counter()
    tmp = root.with_name(f".{root.name}.tmp")
    _remove_tree(tmp)
    log(f"debootstrap {SUITE} arm64 from {mirror} into {tmp} (a few minutes, once)")
    try:
        subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3",
                        SUITE, str(tmp), mirror], check=True,
                       stdout=subprocess.DEVNULL if os.environ.get("EDGELAB_QUIET") else None)
        for point in _mounts_under(tmp):   # debootstrap's own /proc, /sys if it left them
            subprocess.run(["umount", "-l", point], check=False)
        log(f"debootstrap: {time.perf_counter() - t0:.0f} s")
        _install_site(tmp, log)
        shutil.rmtree(tmp / "var/cache/apt/archives", ignore_errors=True)
        (tmp / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        _write_stamp(tmp, time.perf_counter() - t0, mirror)
        _remove_tree(root)
        os.replace(tmp, root)
    except BaseException:
        _remove_tree(tmp)
        raise
    log(f"arm64 root filesystem ready at {root} ({time.perf_counter() - t0:.0f} s, "
        f"{_du_mb(root):.0f} MB)")
    return root


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sm", "--one-file-system", str(path)], capture_output=True,
                         text=True)
    try:
        return float(out.stdout.split()[0])
    except (IndexError, ValueError):
        return float("nan")


def remove_rootfs(root=ROOTFS) -> None:
    """What `make clean` does to the root filesystem (and a half-built one)."""
    root = Path(root)
    _remove_tree(root.with_name(f".{root.name}.tmp"))
    _remove_tree(root)
    root.with_name(f".{root.name}.lock").unlink(missing_ok=True)



HOW_TO_ENABLE = (
    "The arm64 check needs Linux, root, and the emulated Pi set up once: `sudo make pi-rootfs` "
    "(installs qemu-user-static and debootstrap with apt, registers qemu's aarch64 handler, "
    "builds an arm64 Debian root filesystem under ~/.cache/edgelab/: minutes, once, about "
    "400 MB). Binder and other containers without root cannot run it; `make test` runs it on "
    "every CI machine.")


def arm64_available(root=ROOTFS) -> tuple[bool, str]:
    """(True, '') when verify_arm64 can run here, else (False, why and how to enable it)."""
    if not sys.platform.startswith("linux"):
        return False, f"not Linux ({sys.platform}). {HOW_TO_ENABLE}"
    if os.geteuid() != 0:
        return False, f"not running as root. {HOW_TO_ENABLE}"
    if not rootfs_ready(root):
        return False, f"no arm64 root filesystem at {root}. {HOW_TO_ENABLE}"
    if not (binfmt_registered() or BINFMT_CONF.is_file()):
        return False, f"qemu-user-static is not installed. {HOW_TO_ENABLE}"
    return True, ""


def chroot_run(root: Path, argv: list[str], timeout: float, cpuinfo: Path | None = None,
               qemu_cpu: str = QEMU_CPU) -> subprocess.CompletedProcess:
    """Run an arm64 command in ``root`` under qemu (``QEMU_CPU=qemu_cpu``), with the host's /proc
    and /sys bind-mounted (and ``cpuinfo`` over /proc/cpuinfo) in a private mount namespace:
    the mounts vanish with the process, so nothing is left mounted inside the cached tree."""
    script = ('mount --bind /proc "$1/proc" && mount --bind /sys "$1/sys" && '
              '{ [ -z "$2" ] || mount --bind "$2" "$1/proc/cpuinfo"; } && '
              'r="$1" && shift 2 && exec chroot "$r" "$@"')
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "QEMU_CPU": _check_cpu(qemu_cpu), "PYTHONPATH": "/" + SITE, "LANG": "C.UTF-8", "HOME": "/root",
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           "sh", str(root), str(cpuinfo or ""), *argv], capture_output=True,
                          text=True, timeout=timeout, env=env)


PROBE = ("import ctypes, platform, sys; hw = ctypes.CDLL(None).getauxval(16); "
         "print(platform.machine(), sys.version.split()[0], hw)")

# AT_HWCAP bits on arm64 (linux/arch/arm64/include/uapi/asm/hwcap.h), as /proc/cpuinfo names them
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
               "jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc "
               "flagm ssbs sb paca pacg").split()


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


def _check_cpu(qemu_cpu: str) -> str:
    if qemu_cpu not in MIDR:
        raise ValueError(f"qemu_cpu must be one of {sorted(MIDR)} (the Raspberry Pi 4's and 5's "
                         f"cores), got {qemu_cpu!r}")
    return qemu_cpu


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgelab.pi_rootfs",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOTFS)
    p.add_argument("--mirror", default=None, help="Debian mirror (default: this machine's apt's)")
    p.add_argument("--remove", action="store_true", help="remove it instead (what make clean does)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.remove:
            remove_rootfs(args.root)
            return 0
        build_rootfs(args.root, args.mirror)
    except Arm64Unavailable as e:
        print(f"pi-rootfs: error: {e}", file=sys.stderr)
        return 1
    print(f"pi-rootfs: {args.root} ready, qemu-aarch64 binfmt handler registered "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
