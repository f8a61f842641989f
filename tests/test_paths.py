"""Where edgelab's folders are: resolved at call time, the environment's overrides included."""
import subprocess
import sys

import pytest

from edgelab import paths
from edgelab.pi import rootfs


def test_the_pi_rootfs_is_one_folder_per_release_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGELAB_PI_ROOTFS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert paths.pi_rootfs() == tmp_path / "edgelab" / "pi-rootfs-bookworm-arm64"
    assert paths.pi_rootfs("trixie") == tmp_path / "edgelab" / "pi-rootfs-trixie-arm64"


def test_the_default_pi_rootfs_is_the_release_the_rootfs_module_builds(monkeypatch):
    monkeypatch.delenv("EDGELAB_PI_ROOTFS", raising=False)
    assert rootfs.SUITE == paths.PI_RELEASE == "bookworm"
    assert paths.pi_rootfs() == paths.pi_rootfs(rootfs.SUITE)


def test_edgelab_pi_rootfs_names_the_folder_for_any_release(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGELAB_PI_ROOTFS", str(tmp_path / "mine"))
    assert paths.pi_rootfs() == paths.pi_rootfs("trixie") == tmp_path / "mine"


@pytest.mark.parametrize("release", ["", "Bookworm", "../etc", "bookworm-arm64", 12])
def test_a_release_that_is_not_a_code_name_is_refused(release):
    with pytest.raises(ValueError, match=r"code name, e.g. 'bookworm'"):
        paths.pi_rootfs(release)


def test_the_command_line_prints_what_the_makefile_asks_for(monkeypatch, capsys):
    monkeypatch.delenv("EDGELAB_PI_ROOTFS", raising=False)
    assert paths.main(["pi_rootfs"]) == 0
    assert capsys.readouterr().out.strip() == str(paths.pi_rootfs(rootfs.SUITE))
    assert paths.main(["pi_rootfs", "trixie"]) == 0
    assert capsys.readouterr().out.strip() == str(paths.pi_rootfs("trixie"))
    assert paths.main(["pi_rootfs", "Trixie"]) == 2
    assert "code name" in capsys.readouterr().err
    assert paths.main(["results_dir", "x"]) == 2 and paths.main([]) == 2


def test_paths_answers_on_the_command_line_without_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgelab.paths", "pi_rootfs"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("-arm64")
    assert " torch" not in out.stderr   # -X importtime lists every module imported


def test_the_assembled_results_follow_edgelab_results(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGELAB_RESULTS", raising=False)
    assert paths.results_file() == paths.build_dir() / "results.json"
    monkeypatch.setenv("EDGELAB_RESULTS", str(tmp_path / "mine"))
    assert paths.results_dir() == tmp_path / "mine"
    assert paths.results_file() == tmp_path / "mine.json"   # never build/results.json
    monkeypatch.setenv("EDGELAB_RESULTS", str(tmp_path / "results.smoke"))
    assert paths.results_file() == tmp_path / "results.smoke.json"   # a dot in the name stays
