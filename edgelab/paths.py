"""Every folder edgelab reads or writes, resolved when asked, never copied into constants.

Each function reads ``ROOT`` (and the environment) at call time, so a test that patches
``paths.ROOT`` or sets a variable reaches every module. No torch import: the Makefile, the
workbook runner and the Pi side can ask for a path in milliseconds.

Environment overrides: ``$EDGELAB_DATA`` (a folder holding Fashion-MNIST, searched first),
``$EDGELAB_RESULTS`` (where notebooks write their results; the assembled file goes beside it),
``$EDGELAB_PI_ROOTFS`` (the arm64 root filesystem; else ``$XDG_CACHE_HOME`` or ``~/.cache``),
``$EDGELAB_WHEELHOUSE``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["ROOT", "DEBIAN_DIR", "PI_RELEASE", "DataNotFoundError", "repo_root", "data_search_dirs",
           "checkpoints_dir", "build_dir", "cache_dir", "results_dir", "results_file", "resume_dir",
           "executed_dir", "bundle_dir", "notebooks_dir", "user_cache_dir", "pi_rootfs",
           "wheelhouse", "atomic_write_bytes", "main"]

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")   # Debian's dataset-fashion-mnist
PI_RELEASE = "bookworm"   # the Debian release edgelab.pi.rootfs builds (Raspberry Pi OS 64-bit's)


class DataNotFoundError(FileNotFoundError):
    pass


def repo_root() -> Path:
    return ROOT


def data_search_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: ``$EDGELAB_DATA``, ``data/fashion-mnist/``,
    the Debian package's folder. A folder named by ``$EDGELAB_DATA`` must exist: the user named
    it, so a typo is an error, not a silent fall-back to another copy."""
    dirs = []
    named = os.environ.get("EDGELAB_DATA")
    if named:
        if not Path(named).is_dir():
            raise DataNotFoundError(
                f"EDGELAB_DATA={named} is not a folder. Point it at the folder that holds the four "
                "Fashion-MNIST files, or unset it to use data/fashion-mnist/ or the Debian "
                f"package's {DEBIAN_DIR}.")
        dirs.append(Path(named))
    return dirs + [repo_root() / "data" / "fashion-mnist", DEBIAN_DIR]


def checkpoints_dir() -> Path:
    """The shipped checkpoints and their JSON cards."""
    return repo_root() / "data" / "checkpoints"


def build_dir() -> Path:
    """Everything a run produces; ``make clean`` removes it."""
    return repo_root() / "build"


def cache_dir(*parts: str) -> Path:
    """``build/cache/`` (or a subfolder of it): results rebuilt when missing (``edgelab.cache``)."""
    return build_dir().joinpath("cache", *parts)


def results_dir() -> Path:
    """Where each notebook writes ``<notebook>.json``; ``$EDGELAB_RESULTS`` redirects it."""
    return Path(os.environ.get("EDGELAB_RESULTS") or build_dir() / "results")


def results_file() -> Path:
    """``build/results.json``: every notebook's results, assembled by ``make run``. It sits beside
    ``results_dir()`` (``$EDGELAB_RESULTS=/tmp/r`` gives ``/tmp/r.json``), so a redirected run
    never overwrites the real one."""
    folder = results_dir()
    return folder.parent / (folder.name + ".json")   # not with_suffix: a dot in the name stays


def resume_dir() -> Path:
    """Partial training runs of ``python -m edgelab.train``, picked up after a stop."""
    return build_dir() / "train"


def executed_dir() -> Path:
    """The notebooks as ``make run`` executed them."""
    return build_dir() / "executed"


def bundle_dir() -> Path:
    """The Raspberry Pi bundle (model, runner, wheels list) as built."""
    return build_dir() / "pi_bundle"


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def user_cache_dir() -> Path:
    """Per-user cache outside the repository (``$XDG_CACHE_HOME/edgelab`` or ``~/.cache/edgelab``):
    large things built once per machine."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelab"


def pi_rootfs(release: str = PI_RELEASE) -> Path:
    """The arm64 root filesystem of Debian ``release`` the bundle is verified in, one folder per
    release (``~/.cache/edgelab/pi-rootfs-bookworm-arm64`` by default); ``$EDGELAB_PI_ROOTFS``
    names the folder instead."""
    if not (isinstance(release, str) and release.isascii() and release.isalpha()
            and release.islower()):
        raise ValueError(f"release is a Debian release's code name, e.g. {PI_RELEASE!r} or "
                         f"'trixie'; got {release!r}")
    return Path(os.environ.get("EDGELAB_PI_ROOTFS")
                or user_cache_dir() / f"pi-rootfs-{release}-arm64")


def wheelhouse() -> Path:
    """The offline wheel folder ``make wheelhouse`` fills; ``$EDGELAB_WHEELHOUSE``."""
    return Path(os.environ.get("EDGELAB_WHEELHOUSE") or repo_root() / "wheelhouse")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    """``python -m edgelab.paths pi_rootfs`` prints one path (the Makefile asks this way);
    ``pi_rootfs trixie`` that of another release."""
    import sys

    names = [n for n in __all__ if n[0].islower() and n not in ("data_search_dirs", "main")]
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in names or len(args) > (2 if args[0] == "pi_rootfs" else 1):
        print(f"usage: python -m edgelab.paths {{{','.join(names)}}} (pi_rootfs [release])",
              file=sys.stderr)
        return 2
    try:
        print(globals()[args[0]](*args[1:]))
    except ValueError as e:
        print(f"edgelab.paths: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
