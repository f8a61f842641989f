"""The public API: every module of edgelab declares ``__all__``, each name in it exists, and the
notebooks use no name outside it (what a notebook uses is what a learner will copy)."""
import ast
import importlib
import pkgutil

import jupytext
import pytest

import edgelab
from edgelab import workbook

# every module and subpackage, by its name under edgelab: "data", "pi", "pi.bundle", ...
MODULES = sorted(m.name.removeprefix("edgelab.")
                 for m in pkgutil.walk_packages(edgelab.__path__, prefix="edgelab."))


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_all_and_each_name_exists(name):
    mod = importlib.import_module(f"edgelab.{name}")
    assert isinstance(getattr(mod, "__all__", None), list), f"edgelab.{name} has no __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"edgelab.{name}.__all__ names what it does not define: {missing}"
    assert len(set(mod.__all__)) == len(mod.__all__), f"edgelab.{name}.__all__ repeats a name"


def _edgelab_names_used(code: str) -> set[tuple[str, str]]:
    """(module, name) for every ``module.name``, ``pi.bundle.name`` and ``from edgelab.module
    import name``; a name that is itself a module (``from edgelab.pi import bundle``) becomes an
    alias whose attributes are checked in turn."""
    tree = ast.parse(code)
    aliases, used = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "edgelab":
            parent = node.module.removeprefix("edgelab").lstrip(".")
            for a in node.names:
                full = f"{parent}.{a.name}".lstrip(".")
                if full in MODULES:
                    aliases[a.asname or a.name] = full
                if parent:
                    used.add((parent, a.name))
    for node in ast.walk(tree):
        chain, inner = [], node
        while isinstance(inner, ast.Attribute):
            chain.insert(0, inner.attr)
            inner = inner.value
        if not chain or not isinstance(inner, ast.Name) or inner.id not in aliases:
            continue
        module = aliases[inner.id]
        for attr in chain:   # pi.bundle.build: "bundle" in pi, then "build" in pi.bundle
            used.add((module, attr))
            if f"{module}.{attr}" not in MODULES:
                break
            module = f"{module}.{attr}"
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
