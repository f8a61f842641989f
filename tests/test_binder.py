"""Binder: binder/ agrees with the main pins, repo2docker reads it the way mybinder.org would, and
every notebook runs in smoke mode inside Binder's limits (1 CPU, 2 GB).

The notebooks run here on the main (CUDA-bundling) torch wheels, whose resident memory is at
least that of Binder's CPU-only ones: a stricter proxy, not a copy of Binder."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from edgelab import workbook
from edgelab.paths import ROOT as REPO_ROOT

BINDER = REPO_ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
BINDER_MEMORY_MB = 2048
NOTEBOOKS = workbook.notebooks()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_binder_pins_cpu_only_torch_at_the_main_versions():
    main, binder = _pins(REPO_ROOT / "requirements.txt"), _pins(BINDER / "requirements.txt")
    for dist in ("torch", "torchvision"):
        assert binder.get(dist) == f"{main[dist]}+cpu", (
            f"binder/requirements.txt pins {dist}=={binder.get(dist)}; requirements.txt pins "
            f"{main[dist]}: Binder needs {dist}=={main[dist]}+cpu from the CPU wheel index")
    text = (BINDER / "requirements.txt").read_text()
    assert f"--extra-index-url {CPU_INDEX}" in text, f"binder/requirements.txt must name {CPU_INDEX}"
    # Everything else comes from the main files, so Binder cannot drift from them.
    assert re.search(r"^-r \.\./requirements\.txt$", text, re.M), "binder/ must include -r ../requirements.txt"
    assert re.search(r"^-c \.\./constraints\.txt$", text, re.M), "binder/ must include -c ../constraints.txt"


def test_binder_runs_python_3_11_installs_the_data_and_edgelab_without_resolving_again():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    assert "dataset-fashion-mnist" in (BINDER / "apt.txt").read_text().split()
    post = BINDER / "postBuild"
    lines = [l.strip() for l in post.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "set -e", "binder/postBuild must stop at the first failing command (set -e)"
    assert any(re.match(r"pip install .*--no-deps.* (-e )?\.$", l) for l in lines), \
        "binder/postBuild must install edgelab with pip install --no-deps (deps come from requirements)"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable: chmod +x binder/postBuild"


def test_repo2docker_reads_binder_and_plans_the_build_without_docker():
    r2d = Path(sys.executable).with_name("jupyter-repo2docker")
    out = subprocess.run([str(r2d), "--no-build", "--no-run", "--debug", str(REPO_ROOT)],
                         capture_output=True, text=True, timeout=120)
    plan = out.stdout + out.stderr
    assert out.returncode == 0, f"repo2docker could not plan the Binder build:\n{plan[-3000:]}"
    expected = {
        "Python 3.11 (binder/runtime.txt)": "python=3.11",
        "apt: dataset-fashion-mnist (binder/apt.txt)": "install --yes --no-install-recommends dataset-fashion-mnist",
        "pip: binder/requirements.txt": 'pip install --no-cache-dir -r "binder/requirements.txt"',
        "binder/postBuild": "./binder/postBuild",
    }
    missing = [what for what, needle in expected.items() if needle not in plan]
    assert not missing, f"repo2docker's plan lacks {missing}:\n{plan[-3000:]}"


@pytest.mark.heavy   # a notebook in a kernel of its own
def test_memory_cap_stops_a_notebook_that_goes_over_it(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("SMOKE = True\nNOTEBOOK = 'x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import time\nx = bytearray(600 * 2**20)\ntime.sleep(300)"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                 "language_info": {"name": "python"}})
    path = tmp_path / "99_hog.ipynb"
    nbformat.write(nb, path)
    meta = workbook.execute(path, tmp_path / "out", smoke=True, cpus="0", memory_cap_mb=300)
    assert meta["over_cap"] and not meta["ok"]
    assert meta["peak_tree_mb"] > 300 and meta["seconds"] < 200  # stopped, not left to sleep


@pytest.mark.skipif(not shutil.which("taskset"), reason="taskset (util-linux) is not installed")
@pytest.mark.heavy
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_on_one_cpu_within_binder_memory(nb, tmp_path):
    meta = workbook.execute(nb, tmp_path / "executed", smoke=True, cpus="0",
                            memory_cap_mb=BINDER_MEMORY_MB,
                            extra_env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                       "EDGELAB_RESULTS": str(tmp_path / "results")})
    peak = f"peak {meta['peak_tree_mb']} MB (kernel process tree, smoke mode, 1 CPU)"
    print(f"{nb.stem}: {meta['seconds']:.0f} s, {peak}")  # shown with pytest -s or -rP
    assert not meta["over_cap"], (
        f"{nb.name} went over Binder's {BINDER_MEMORY_MB} MB and was stopped: {peak}")
    assert meta["ok"], f"{nb.name} failed on 1 CPU ({peak}); see {tmp_path / 'executed' / nb.name}"
    payload = json.loads((tmp_path / "results" / f"{nb.stem}.json").read_text())
    assert payload["smoke"] is True and payload["records"], f"{nb.name} wrote no records"
