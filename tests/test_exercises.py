"""The exercise registry (``edgelab.check.EXERCISES``) is the one list of exercises: each is
called in exactly one notebook, the one it names; every checker a notebook calls is registered;
each reference passes its own checks; and the facilitator guide's table is written from it."""
import inspect
import re
import runpy
from pathlib import Path

import pytest

from edgelab import check

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {p.stem: p.read_text() for p in sorted((ROOT / "notebooks").glob("[0-9]*.py"))}
CALL = re.compile(r"\bcheck\.(\w+)\(")
CORE = {"Outcome", "run_cases", "verdict", "Exercise", "EXERCISES", "register"}


def _calls(name: str) -> list[str]:
    """The notebooks whose source calls ``check.<name>(``."""
    return [nb for nb, src in SOURCES.items() if name in CALL.findall(src)]


def test_every_registered_exercise_is_called_in_exactly_one_notebook_its_own():
    assert check.EXERCISES, "no exercise registered"
    wrong = {name: _calls(name) for name, ex in check.EXERCISES.items()
             if _calls(name) != [ex.notebook]}
    assert not wrong, f"called in other notebooks than the one registered (or none): {wrong}"


def test_every_checker_a_notebook_calls_is_registered():
    called = {(nb, name) for nb, src in SOURCES.items() for name in CALL.findall(src)}
    assert called, "no notebook calls a checker?"
    unregistered = sorted(f"{nb}: check.{name}(" for nb, name in called
                          if name not in check.EXERCISES)
    assert not unregistered, f"not in edgelab.check.EXERCISES: {unregistered}"


def test_the_public_checkers_are_the_registrys():
    assert set(check.__all__) - CORE == set(check.EXERCISES)
    for name, ex in check.EXERCISES.items():
        checker = getattr(check, name)
        assert ex.name == name and checker.exercise is ex and checker.__name__ == name
        assert list(inspect.signature(checker).parameters) == ["fn", "quiet"]
        assert checker.__doc__.startswith(f"Check the learner's ``{ex.signature}``")
        assert ex.minutes > 0 and ex.hint and ex.checks and ex.notebook in SOURCES


@pytest.mark.parametrize("name", sorted(check.EXERCISES))
def test_the_reference_passes_its_own_checks_and_is_the_fallback(name, capsys):
    ex = check.EXERCISES[name]
    solution = ex.solution()
    assert callable(solution)
    assert (ROOT / ex.where.split(": ")[0]).exists(), ex.where
    assert getattr(check, name)(solution, quiet=True) is solution, f"{ex.reference} fails"

    def stub(*args, **kwargs):
        raise NotImplementedError

    assert getattr(check, name)(stub) is solution
    assert "not attempted" in capsys.readouterr().out


def test_an_exercise_is_registered_once():
    ex = check.EXERCISES["magnitude_mask"]
    with pytest.raises(ValueError, match="registered twice"):
        check.register(ex)


def test_the_facilitator_table_is_written_from_the_registry():
    script = runpy.run_path(str(ROOT / "docs" / "update_facilitator.py"))
    table = script["answers_block"]()
    listed = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert sorted(listed) == sorted(check.EXERCISES), listed
    guide = (ROOT / "docs" / "facilitator.md").read_text()
    block = guide.split("<!-- answers:start -->\n", 1)[1].split("\n<!-- answers:end -->", 1)[0]
    assert block == table, ("docs/facilitator.md's exercise table is out of date: run "
                            "`python docs/update_facilitator.py --only answers --write`")
