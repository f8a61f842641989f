"""Every notebook in notebooks/ runs headlessly with papermill in smoke mode and writes its
results. (nbval runs them too, comparing the outputs marked NBVAL_CHECK_OUTPUT.)"""
import json

import pytest

from edgelab import workbook

NOTEBOOKS = workbook.notebooks()


def test_the_workbook_has_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].stem == "00_baseline"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode_and_writes_its_results(nb, tmp_path):
    meta = workbook.execute(nb, tmp_path / "executed", smoke=True,
                            extra_env={"EDGELAB_RESULTS": str(tmp_path / "results")})
    assert meta["ok"], f"{nb.name} failed under papermill; see {tmp_path / 'executed' / nb.name}"
    payload = json.loads((tmp_path / "results" / f"{nb.stem}.json").read_text())
    assert payload["smoke"] is True and payload["records"]
    assert all(r["notebook"] == nb.stem for r in payload["records"])
    assert meta["peak_rss_mb"] > 0
