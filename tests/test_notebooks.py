"""The workbook's notebooks are found in order. Each one is executed in smoke mode twice in
`make test`: by nbval (comparing the outputs marked NBVAL_CHECK_OUTPUT) and by
tests/test_binder.py (papermill on one CPU under Binder's memory cap, checking the results file),
so this file does not run them a third time."""
from edgelab import workbook


def test_the_workbook_has_its_notebooks_in_order():
    names = [nb.stem for nb in workbook.notebooks()]
    assert names[0] == "00_baseline"
    assert names == sorted(names)
    assert {"03_distillation", "04_low_rank", "05_deploy_pi", "06_pipeline"} <= set(names)
