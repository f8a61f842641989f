"""The emulated Pi's root filesystem (edgelab.pi.rootfs): torch-free so `make pi-rootfs` re-checks
in a fraction of a second, the Debian mirror read from this machine's apt, and removal that
takes a half-built tree and its lock with it. Building it is `make pi-rootfs` (needs root)."""
import json
import subprocess
import sys

from edgelab import paths
from edgelab.pi import rootfs


def test_the_rootfs_module_imports_no_torch():
    code = "import sys, edgelab.pi.rootfs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=paths.repo_root(), timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_debian_mirror_is_read_from_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGELAB_DEBIAN_MIRROR", raising=False)
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert rootfs.debian_mirror([tmp_path / "debian.sources"]) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert rootfs.debian_mirror([tmp_path / "sources.list"]) == "http://old.example/debian"
    assert rootfs.debian_mirror([tmp_path / "none"]) == rootfs.DEFAULT_MIRROR


def test_remove_takes_a_half_built_tree_and_the_lock_with_it(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "_need_root", lambda what: None)   # `make check` needs no root
    root = tmp_path / "pi-rootfs"
    for d in (root / "usr/bin", tmp_path / ".pi-rootfs.tmp/usr"):
        d.mkdir(parents=True)
    (tmp_path / ".pi-rootfs.lock").touch()
    monkeypatch.setenv("EDGELAB_PI_ROOTFS", str(root))
    assert rootfs.main(["--remove"]) == 0
    assert list(tmp_path.iterdir()) == []
    assert not rootfs.rootfs_ready(root)


def test_a_root_filesystem_without_the_current_debian_packages_is_not_ready(tmp_path):
    # one built before g++ was added must be rebuilt, or the ExecuTorch bundle cannot build its
    # runner; the same stamp with the current package list is ready
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3").touch()
    (root / "opt").mkdir()
    stamp = {"requirements_sha256": rootfs._requirements_hash(), "packages": ["python3"]}
    (root / rootfs.STAMP).write_text(json.dumps(stamp))
    assert not rootfs.rootfs_ready(root)
    (root / rootfs.STAMP).write_text(json.dumps(dict(stamp, packages=list(rootfs.PACKAGES))))
    assert rootfs.rootfs_ready(root)
    assert "g++" in rootfs.PACKAGES
