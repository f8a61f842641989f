"""The workbook runner: peak memory as a container sees it, and partial runs."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from edgelab import paths, targets, workbook


def test_the_tree_peak_counts_a_forked_childs_shared_pages_once():
    # 200 MB touched, then fork: the child shares every page. RSS summed over the two processes
    # says ~400 MB; a container is charged ~200 MB, which is what the tree peak must say.
    code = ("import os, time\nb = b'x' * (200 << 20)\nos.fork()\ntime.sleep(3)\n")
    parent = subprocess.Popen(["/bin/sh", "-c", f"{sys.executable} -c \"{code}\""])
    stop, peak = threading.Event(), [0, 0, 0]
    watcher = threading.Thread(target=workbook._watch_peak,
                               args=(psutil.Process(parent.pid), stop, peak))
    watcher.start()
    time.sleep(2)
    stop.set()
    watcher.join()
    parent.wait()
    mb = [v / 2**20 for v in peak[:2]]
    assert mb[0] > 190, f"largest single RSS {mb[0]:.0f} MB: the 200 MB were not seen"
    assert mb[1] < 300, f"tree peak {mb[1]:.0f} MB counts the shared pages twice"


@pytest.fixture
def fake_workbook(tmp_path, monkeypatch):
    """Three notebooks that 'run' by writing one record each; the build folder in tmp_path."""
    nbs = [tmp_path / f"{i:02d}_nb{i}.ipynb" for i in range(3)]
    monkeypatch.setattr(paths, "ROOT", tmp_path)   # build/ and build/results/ follow it
    monkeypatch.delenv("EDGELAB_RESULTS", raising=False)
    monkeypatch.setattr(workbook, "notebooks", lambda: nbs)
    monkeypatch.setattr(workbook, "run_info", lambda smoke: {"smoke": smoke})
    monkeypatch.setattr(targets, "targets_table", lambda res: "")
    ran = []

    def execute(nb: Path, out_dir, smoke):
        ran.append(nb.stem)
        paths.results_dir().mkdir(parents=True, exist_ok=True)
        (paths.results_dir() / f"{nb.stem}.json").write_text(json.dumps(
            {"records": [{"notebook": nb.stem, "name": f"run{len(ran)}"}]}))
        return {"seconds": float(len(ran)), "peak_rss_mb": 1, "peak_tree_mb": 1, "ok": True}

    monkeypatch.setattr(workbook, "execute", execute)
    return ran


def _results():
    return json.loads(paths.results_file().read_text())


def test_only_reruns_one_notebook_and_keeps_the_others_results(fake_workbook):
    assert workbook.run(smoke=True) == 0
    assert workbook.run(smoke=True, only=["01_nb1"]) == 0
    res = _results()
    assert fake_workbook == ["00_nb0", "01_nb1", "02_nb2", "01_nb1"]
    assert [r["name"] for r in res["records"]] == ["run1", "run4", "run3"]
    assert list(res["notebooks"]) == ["00_nb0", "01_nb1", "02_nb2"]
    assert res["run"]["only"] == ["01_nb1"] and res["run"]["kept"] == ["00_nb0", "02_nb2"]


def test_only_never_mixes_smoke_results_with_full_ones(fake_workbook):
    workbook.run(smoke=True)
    workbook.run(smoke=False, only=["01_nb1"])
    res = _results()
    assert [r["notebook"] for r in res["records"]] == ["01_nb1"]
    assert list(res["notebooks"]) == ["01_nb1"] and res["run"]["kept"] == []


def test_only_with_an_unknown_name_says_which_names_are_valid(fake_workbook):
    with pytest.raises(SystemExit, match="no notebook named 07_nope; valid: 00_nb0, 01_nb1"):
        workbook.run(smoke=True, only=["07_nope"])
    assert fake_workbook == []
