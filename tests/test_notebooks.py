"""The workbook's notebooks are found in order, and each is paired with its py:percent source.

Each notebook is executed in smoke mode twice in `make test`: by nbval (comparing the outputs
marked NBVAL_CHECK_OUTPUT) and by tests/test_binder.py (papermill on one CPU under Binder's memory
cap, checking the results file), so this file does not run them a third time."""
import jupytext
import nbformat
import pytest

from edgelab import workbook


def test_the_workbook_has_its_notebooks_in_order():
    names = [nb.stem for nb in workbook.notebooks()]
    assert names[0] == "00_baseline"
    assert names == sorted(names)
    assert {"03_distillation", "04_low_rank", "05_deploy_pi", "06_pipeline"} <= set(names)


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("path", workbook.notebooks(), ids=lambda p: p.stem)
def test_each_notebook_matches_its_py_percent_source(path):
    # Parsed, not compared by timestamp: a fresh clone gives both files the same mtime.
    source = path.with_suffix(".py")
    assert source.is_file(), f"{path.name} has no paired {source.name}: run " \
                             f"`jupytext --set-formats ipynb,py:percent {path}`"
    ipynb, py = _cells(nbformat.read(path, as_version=4)), _cells(jupytext.read(source))
    for i, (a, b) in enumerate(zip(ipynb, py)):
        assert a == b, (f"cell {i} differs between {path.name} and {source.name}; edit the .py, "
                        f"then `make sync-notebooks`:\n  ipynb: {a}\n  py:    {b}")
    assert len(ipynb) == len(py), f"{path.name} has {len(ipynb)} cells, {source.name} {len(py)}"


@pytest.mark.parametrize("path", workbook.notebooks(), ids=lambda p: p.stem)
def test_every_figure_a_notebook_shows_goes_through_the_figure_check(path):
    # figures.show() runs edgelab.figures.check under make test / make run; plt.show() would not.
    source = path.with_suffix(".py").read_text()
    assert "plt.show()" not in source, f"{path.stem}: use figures.show(fig), not plt.show()"
    if "plt.subplots" in source or "plots.cost_figure" in source:
        assert "figures.show(" in source
