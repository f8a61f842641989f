"""The arm64 root filesystem the emulated Raspberry Pi runs in: Debian bookworm (what Raspberry
Pi OS 64-bit builds on, debootstrap from Debian's own packages, with g++ for the ExecuTorch
bundle's runner) with each runtime's bundle requirements from their aarch64 wheels on PyPI, a
site folder per runtime. Beside them, in a site folder of its own, an onnxruntime release built
with instructions the Pi 4 lacks: the proof that the emulated A72 (edgelab.pi.emulate) rejects
what a real Pi 4 would.

`make pi-rootfs` = ``python -m edgelab.pi.rootfs``: builds it once (minutes) under
``~/.cache/edgelab/``, then only re-checks qemu's binfmt handler, which the kernel forgets at
each boot. This module imports no torch, so that check takes a fraction of a second. It needs
Linux and root (apt, debootstrap, chroot, mounts, binfmt_misc). Where it lives is
``edgelab.paths.pi_rootfs(SUITE)``; ``--remove`` removes it (what `make clean` does), so the
Makefile spells out neither.
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

from .. import paths
from . import TEMPLATE

__all__ = ["SUITE", "PI_PYTHON", "DEFAULT_MIRROR", "PACKAGES", "STAMP", "SITE", "SITES",
           "SIGILL_PIN",
           "SIGILL_SITE", "BINFMT", "BINFMT_CONF", "Arm64Unavailable", "rootfs_ready",
           "binfmt_registered", "ensure_binfmt", "debian_mirror", "build_rootfs", "remove_rootfs",
           "wheel_bytes"]

SUITE = paths.PI_RELEASE           # bookworm: Debian 12, what Raspberry Pi OS (64-bit) builds on
PI_PYTHON = "3.11"                 # its python3
# A release reported to die with "Illegal instruction" on Pi 4 boards, and seen to do so here
# under QEMU_CPU=cortex-a72 (it runs under cortex-a76): installed apart, never on PYTHONPATH.
SIGILL_PIN = "onnxruntime==1.21.0"
SIGILL_SITE = "opt/site-sigill"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Debian packages besides the minimal base: the Pi's python3, and g++ for the ExecuTorch bundle,
# whose predict.py builds its C++ runner (pi/template/et_runner.cpp) once on the machine itself.
PACKAGES = ("python3", "g++")
STAMP = "opt/edgelab-rootfs.json"  # inside the root filesystem: written last, renamed with it
SITE = "opt/site"                  # the bundle's requirements, installed from PyPI's wheels
# each runtime's bundle requirements (pi/template/requirements*.txt) in a site folder of its own
SITES = {"onnxruntime": SITE, "litert": "opt/site-litert", "executorch": "opt/site-executorch"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")


class Arm64Unavailable(RuntimeError):
    """No arm64 emulation on this machine (no root filesystem, no qemu, not root)."""


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _requirements(runtime: str) -> Path:
    return TEMPLATE / ("requirements.txt" if runtime == "onnxruntime"
                       else f"requirements-{runtime}.txt")


def _requirements_hash() -> str:
    blob = b"".join(_requirements(r).read_bytes() for r in SITES)
    return hashlib.sha256(blob + SIGILL_PIN.encode()).hexdigest()


def _stamp(root: Path) -> dict:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def wheel_bytes(root=None) -> dict[str, int]:
    """{runtime: bytes of the aarch64 / CPython 3.11 wheels its bundle installs}, as recorded when
    `make pi-rootfs` downloaded them; {} where the root filesystem is not built."""
    try:
        meta = json.loads((Path(root or paths.pi_rootfs(SUITE)) / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return {k: int(v) for k, v in meta.get("wheel_bytes", {}).items()}


def rootfs_ready(root=None) -> bool:
    """The root filesystem (``root``, default edgelab.paths.pi_rootfs(SUITE)) is built and holds the
    bundle's current requirements."""
    root = Path(root or paths.pi_rootfs(SUITE))
    meta = _stamp(root)
    return (meta.get("requirements_sha256") == _requirements_hash()
            and meta.get("packages") == list(PACKAGES)
            and (Path(root) / "usr/bin/python3").exists())


def binfmt_registered() -> bool:
    """qemu's aarch64 handler is registered with the kernel and enabled."""
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


def _pip_aarch64(*args) -> None:
    offline = (["--no-index", "--find-links", os.environ["EDGELAB_PI_WHEELS"]]
               if os.environ.get("EDGELAB_PI_WHEELS") else [])   # make wheelhouse's
    subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", *offline,
                    "--disable-pip-version-check", "--no-cache-dir",
                    "--platform", "manylinux_2_27_aarch64", "--platform", "manylinux_2_28_aarch64",
                    "--python-version", PI_PYTHON, "--implementation", "cp",
                    "--only-binary=:all:"], check=True)


def _install_site(root: Path, log) -> dict[str, int]:
    """Each runtime's bundle requirements (pi/template/requirements*.txt) as aarch64 / CPython
    3.11 wheels from PyPI (or from $EDGELAB_PI_WHEELS, the wheelhouse's aarch64 folder),
    downloaded, weighed and installed on the host into ROOT/<SITES[runtime]>, with --no-deps
    (every file lists its whole set); SIGILL_PIN into ROOT/opt/site-sigill. pip never runs under
    emulation; each site is replaced atomically. Returns {runtime: wheel bytes}."""
    t0 = time.perf_counter()
    sizes = {}
    jobs = [(site, runtime, ["-r", str(_requirements(runtime))]) for runtime, site in SITES.items()]
    for where, runtime, what in jobs + [(SIGILL_SITE, None, [SIGILL_PIN])]:
        site, tmp = root / where, root / f"{where}.tmp"
        _remove_tree(tmp)
        with tempfile.TemporaryDirectory(dir=root / "tmp") as wheels:
            _pip_aarch64("download", "--no-deps", "-d", wheels, *what)
            if runtime:
                sizes[runtime] = sum(f.stat().st_size for f in Path(wheels).iterdir())
            _pip_aarch64("install", "--no-deps", "--no-index", "--find-links", wheels,
                         "--target", str(tmp), *what)
        _remove_tree(site)
        os.replace(tmp, site)
    log(f"pip: the bundles' requirements for aarch64 / Python {PI_PYTHON} in "
        f"{', '.join(SITES.values())} ({', '.join(f'{r} {b / 1e6:.0f} MB' for r, b in sizes.items())}"
        f" of wheels), {SIGILL_PIN} in {SIGILL_SITE} ({time.perf_counter() - t0:.0f} s)")
    return sizes


def _write_stamp(root: Path, seconds: float, mirror: str, what: str = "build",
                 sizes: dict | None = None) -> None:
    """The stamp: what was built, from where, for which requirements, how long it took."""
    meta = _stamp(root)
    meta.update({"suite": SUITE, "arch": "arm64", "mirror": mirror, "python": PI_PYTHON,
                 "packages": list(PACKAGES),
                 "requirements_sha256": _requirements_hash(), f"{what}_seconds": round(seconds, 1),
                 f"{what}_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if sizes is not None:
        meta["wheel_bytes"] = sizes
    _atomic_write(root / STAMP, json.dumps(meta, indent=2) + "\n")


def build_rootfs(root=None, mirror: str | None = None, log=print) -> Path:
    """The arm64 Debian root filesystem that edgelab.pi.emulate runs in, built once and cached.

    When it is there and current this only checks the binfmt handler (seconds). Otherwise:
    install qemu-user-static and debootstrap if missing, register the handler,
    ``debootstrap --arch=arm64 --variant=minbase --include=python3,g++`` into a temporary folder
    next to ``root`` (default edgelab.paths.pi_rootfs(SUITE)), install the bundle's requirements,
    write the stamp, rename into place."""
    root = Path(root or paths.pi_rootfs(SUITE))
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
    if (root / "usr/bin/python3").exists() and _stamp(root).get("packages") == list(PACKAGES):
        log(f"{root}: requirements changed, reinstalling them")
        t0 = time.perf_counter()
        sizes = _install_site(root, log)
        _write_stamp(root, time.perf_counter() - t0, mirror, what="requirements", sizes=sizes)
        return root
    t0 = time.perf_counter()
    tmp = root.with_name(f".{root.name}.tmp")
    _remove_tree(tmp)
    log(f"debootstrap {SUITE} arm64 from {mirror} into {tmp} (a few minutes, once)")
    try:
        subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase",
                        f"--include={','.join(PACKAGES)}",
                        SUITE, str(tmp), mirror], check=True,
                       stdout=subprocess.DEVNULL if os.environ.get("EDGELAB_QUIET") else None)
        for point in _mounts_under(tmp):   # debootstrap's own /proc, /sys if it left them
            subprocess.run(["umount", "-l", point], check=False)
        log(f"debootstrap: {time.perf_counter() - t0:.0f} s")
        sizes = _install_site(tmp, log)
        shutil.rmtree(tmp / "var/cache/apt/archives", ignore_errors=True)
        (tmp / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        _write_stamp(tmp, time.perf_counter() - t0, mirror, sizes=sizes)
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


def remove_rootfs(root=None) -> None:
    """What `make clean` does to the root filesystem (and a half-built one)."""
    root = Path(root or paths.pi_rootfs(SUITE))
    if root.exists() or root.with_name(f".{root.name}.tmp").exists():
        _need_root(f"remove {root}")   # built by root: `make clean` retries with sudo
    _remove_tree(root.with_name(f".{root.name}.tmp"))
    _remove_tree(root)
    root.with_name(f".{root.name}.lock").unlink(missing_ok=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgelab.pi.rootfs",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None,
                   help="default: edgelab.paths.pi_rootfs(SUITE)")
    p.add_argument("--mirror", default=None, help="Debian mirror (default: this machine's apt's)")
    p.add_argument("--remove", action="store_true", help="remove it instead (what make clean does)")
    args = p.parse_args(argv)
    args.root = args.root or paths.pi_rootfs(SUITE)
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
