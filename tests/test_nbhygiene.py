from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from edgelab import nbhygiene

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def nb_with(*cells):
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3"}
    nb.cells[0].metadata["tags"] = ["parameters"]
    return nb


def test_committed_notebooks_follow_the_policy():
    found = [p for path in NOTEBOOKS for p in nbhygiene.problems(nbformat.read(path, 4), path.name)]
    assert not found, "\n".join(found) + "\nFix with `make clean-notebooks`."


def test_policy_catches_stray_outputs_errors_paths_and_the_kernel():
    stray = new_code_cell("x = 1", outputs=[new_output("stream", text="1\n")])
    err = new_code_cell("# NBVAL_CHECK_OUTPUT\n1/0",
                        outputs=[new_output("error", ename="ZeroDivisionError", evalue="", traceback=[])])
    path = new_code_cell("open('/home/me/data.bin')")
    nb = nb_with(new_code_cell("SMOKE = True"), stray, err, path)
    nb.metadata["kernelspec"] = {"name": "venv-kernel"}
    found = "\n".join(nbhygiene.problems(nb))
    assert "no cell marked" not in found
    assert "no cell marked" in "\n".join(nbhygiene.problems(nb_with(new_code_cell("SMOKE = 1"))))
    assert "kernel is 'venv-kernel'" in found and "not marked" in found
    assert "error output (ZeroDivisionError)" in found and "absolute path" in found


def test_clean_keeps_only_the_checked_outputs_taken_from_the_executed_copy():
    checked = new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(2)")
    other = new_code_cell("print(3)")
    nb = nb_with(new_code_cell("SMOKE = True"), checked, other)
    executed = nbformat.from_dict(nbformat.v4.new_notebook(cells=[dict(c) for c in nb.cells]))
    executed.cells[1].outputs = [new_output("stream", text="2\n")]
    executed.cells[2].outputs = [new_output("stream", text="3\n")]
    cleaned = nbhygiene.clean(nb, executed)
    assert cleaned.cells[1].outputs[0]["text"] == "2\n" and cleaned.cells[2].outputs == []
    assert nbhygiene.problems(cleaned) == []
