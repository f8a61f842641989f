"""The offline room: `make wheelhouse` gathers every wheel and the dataset into wheelhouse/, and
set-up then installs from it with no index (docs/facilitator.md).

The full check resolves the whole requirement set from a real wheelhouse with the network
switched off for pip. Building one downloads about 3 GB (several minutes), too much for every CI
run: it runs where a complete wheelhouse exists (wheelhouse/, or $EDGELAB_WHEELHOUSE)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgelab.paths import ROOT as REPO_ROOT

WHEELHOUSE = Path(os.environ.get("EDGELAB_WHEELHOUSE", REPO_ROOT / "wheelhouse"))


def _dry_make(tmp_path: Path, target: str, complete: bool) -> str:
    """What `make -n` would run for ``target`` in a copy of the repo's build files."""
    for name in ("Makefile", "requirements.txt", "requirements-nodeps.txt", "constraints.txt",
                 "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    (tmp_path / "wheelhouse" / "data").mkdir(parents=True, exist_ok=True)
    if complete:
        (tmp_path / "wheelhouse" / ".complete").touch()
    out = subprocess.run(["make", "-n", "-B", "-C", str(tmp_path), target], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_setup_installs_from_a_complete_wheelhouse_and_never_from_the_index(tmp_path):
    script = _dry_make(tmp_path, ".venv/.edgelab-installed", complete=True)
    pip = [l for l in script.splitlines() if "pip install" in l]
    # the pins, litert-torch without its unresolvable dependencies (requirements-nodeps.txt), edgelab
    assert len(pip) == 3 and all("--no-index --find-links wheelhouse" in l for l in pip), script
    assert "wheelhouse/data" in _dry_make(tmp_path, "data", complete=True)


def test_setup_uses_the_index_while_the_wheelhouse_is_incomplete(tmp_path):
    script = _dry_make(tmp_path, ".venv/.edgelab-installed", complete=False)
    assert "pip install" in script and "--no-index" not in script


@pytest.mark.skipif(not (WHEELHOUSE / ".complete").exists(),
                    reason=f"no complete wheelhouse at {WHEELHOUSE} (make wheelhouse: ~3 GB)")
def test_every_pin_and_edgelab_install_offline_from_the_wheelhouse(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # No config files and no extra sources: only the wheelhouse may answer.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
           "--no-index", "--find-links", str(WHEELHOUSE)]
    for args in (["--dry-run", "-r", "requirements.txt", "-c", "constraints.txt"],
                 ["--dry-run", "--no-deps", "-r", "requirements-nodeps.txt"],
                 ["--no-deps", "-e", "."]):  # edgelab itself: its build backend must be there too
        out = subprocess.run(pip + args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=900)
        assert out.returncode == 0, (f"offline install from {WHEELHOUSE} failed "
                                     f"(pip {' '.join(args)}):\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    data = sorted(p.name for p in (WHEELHOUSE / "data").iterdir())
    assert len(data) == 4 and all("-ubyte" in n for n in data), f"{WHEELHOUSE}/data holds {data}"
