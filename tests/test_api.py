"""The public API: every module of edgelab declares ``__all__``, each name in it exists, and the
notebooks use no name outside it (what a notebook uses is what a learner will copy)."""
import ast
import importlib
import pkgutil

import jupytext
import pytest

import edgelab
from edgelab import workbook

MODULES = sorted(m.name for m in pkgutil.iter_modules(edgelab.__path__) if not m.ispkg)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_all_and_each_name_exists(name):
    mod = importlib.import_module(f"edgelab.{name}")
    assert isinstance(getattr(mod, "__all__", None), list), f"edgelab.{name} has no __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"edgelab.{name}.__all__ names what it does not define: {missing}"
    assert len(set(mod.__all__)) == len(mod.__all__), f"edgelab.{name}.__all__ repeats a name"


def _edgelab_names_used(code: str) -> set[tuple[str, str]]:
    """(module, name) for every ``module.name`` and ``from edgelab.module import name``."""
    tree = ast.parse(code)
    aliases, used = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "edgelab":
            aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgelab."):
            used.update((node.module.split(".", 1)[1], a.name) for a in node.names)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            used.add((aliases[node.value.id], node.attr))
    return used


@pytest.mark.parametrize("path", workbook.notebooks(), ids=lambda p: p.stem)
def test_notebooks_use_only_public_names(path):
    nb = jupytext.read(path)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code"
                     and not c.source.lstrip().startswith(("%", "!")))
    used = _edgelab_names_used(code)
    assert used, f"{path.name} uses nothing from edgelab?"
    private = sorted(f"{m}.{n}" for m, n in used
                     if n not in importlib.import_module(f"edgelab.{m}").__all__)
    assert not private, f"{path.name} uses names outside their module's __all__: {private}"


def test_docs_api_md_is_generated_from_the_code():
    import runpy

    from edgelab.paths import ROOT as REPO_ROOT

    render = runpy.run_path(str(REPO_ROOT / "docs" / "update_api.py"))["render"]
    assert (REPO_ROOT / "docs" / "api.md").read_text() == render(), \
        "docs/api.md is out of date: run `python docs/update_api.py --write`"
