"""Exercise checkers: run the learner's function on small fixed tensors and say what is off.

Every exercise is a record in ``EXERCISES``, registered by the ``check_*`` modules (one per part
of the workbook): its notebook, what the learner writes, its cases, its reference solution, a
hint and a suggested time. ``check.<name>`` is generated from that record, and the facilitator
guide's table of answers is written from the registry.

Each checker takes the learner's function and returns the function the notebook should go on
with: the learner's when every case passes, else the reference implementation (so Run All
always works). A stub that raises ``NotImplementedError`` counts as "not attempted". A failed
case names the likely mistake and shows its input, the expected result and what came back.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Outcome", "run_cases", "verdict", "Exercise", "EXERCISES", "register",
           "magnitude_mask", "magnitude_threshold", "csr_bytes", "prune_pair", "taylor_scores",
           "quantize_dequantize", "fold_bn", "fake_quant_ste", "int_linear", "kmeans_quantize",
           "factor_conv", "kd_loss", "preprocess", "choose_model"]


@dataclass
class Outcome:
    name: str
    attempted: bool
    failures: list[str] = field(default_factory=list)
    passed: int = 0

    @property
    def ok(self) -> bool:
        return self.attempted and not self.failures

    def __str__(self) -> str:
        if not self.attempted:
            return (f"{self.name}: not attempted. The notebook carries on with the reference "
                    "implementation; fill in the function and run this cell again.")
        if self.ok:
            return f"{self.name}: all {self.passed} checks passed. Well done."
        lines = [f"{self.name}: {len(self.failures)} of {self.passed + len(self.failures)} "
                 "checks failed:"]
        lines += [f"  - {f}" for f in self.failures]
        lines.append("  (the notebook carries on with the reference implementation)")
        return "\n".join(lines)


def run_cases(name: str, fn: Callable, cases: list[tuple[str, Callable]]) -> Outcome:
    """Each case calls ``fn`` and raises AssertionError with an explanation if it is wrong."""
    outcome = Outcome(name, attempted=True)
    for label, case in cases:
        try:
            case(fn)
            outcome.passed += 1
        except NotImplementedError:
            return Outcome(name, attempted=False)
        except AssertionError as e:
            outcome.failures.append(f"{label}: {e}")
        except Exception as e:  # the learner's code crashed: say where, keep going
            outcome.failures.append(f"{label}: raised {type(e).__name__}: {e}")
    return outcome


def verdict(outcome: Outcome, fn: Callable, reference: Callable, quiet: bool = False) -> Callable:
    if not quiet:
        print(outcome)
    return fn if outcome.ok else reference


# -- the registry ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Exercise:
    """One "Your turn", as data: the checker, the facilitator guide and the tests all read it,
    so an exercise is declared once, next to its cases."""
    name: str         # the checker's public name: check.<name>(fn)
    notebook: str     # the notebook (stem) whose "Your turn" calls check.<name>(
    signature: str    # what the learner writes, e.g. "fn(weight, rate) -> bool mask"
    checks: str       # what the cases establish: the checker's docstring
    hint: str         # one line a facilitator can give a learner who is stuck
    minutes: int      # suggested time: a plan for the schedule, not a measurement
    reference: str    # dotted path of the reference solution, imported only when needed
    cases: Callable[[], list[tuple[str, Callable]]]   # builds the (label, case) pairs

    def solution(self) -> Callable:
        """The reference solution the notebook falls back to."""
        module, _, attr = self.reference.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    @property
    def where(self) -> str:
        """The reference's file and name, for the guide: "edgelab/prune.py: magnitude_mask"."""
        module, _, attr = self.reference.rpartition(".")
        return f"{module.replace('.', '/')}.py: {attr}"

    def check(self, fn: Callable, quiet: bool = False) -> Callable:
        return verdict(run_cases(self.name, fn, self.cases()), fn, self.solution(), quiet)


EXERCISES: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Callable:
    """Add ``exercise`` to EXERCISES and return its checker, ``check.<name>(fn, quiet=False)``,
    which returns the learner's ``fn`` if every case passes, else the reference."""
    if exercise.name in EXERCISES:
        raise ValueError(f"exercise {exercise.name!r} is registered twice")
    EXERCISES[exercise.name] = exercise

    def checker(fn: Callable, quiet: bool = False) -> Callable:
        return exercise.check(fn, quiet)
    checker.__name__ = checker.__qualname__ = exercise.name
    checker.__doc__ = f"Check the learner's ``{exercise.signature}``: {exercise.checks}"
    checker.exercise = exercise
    return checker


# -- failure messages ------------------------------------------------------------------------

def _fmt(t, limit: int = 12) -> str:
    """A tensor or array as a flat list, cut after ``limit`` values."""
    values = t.flatten().tolist()
    more = f", … ({len(values)} values)" if len(values) > limit else ""
    return "[" + ", ".join(f"{x:g}" for x in values[:limit]) + more + "]"


def _show(input, expected, got, limit: int = 12) -> str:
    """The failing case under its message, so the learner can compare: tensors and arrays as
    flat lists (with their shape when not 1-D), the rest as text. Of a large result, only the
    values where expected and got differ."""
    import numpy as np

    def flat(v):
        if not (hasattr(v, "shape") and hasattr(v, "flatten")):
            return None
        return np.asarray(v.detach() if hasattr(v, "detach") else v, dtype=np.float64).ravel()

    rows, note = {"input": input, "expected": expected, "got": got}, ""
    want, have = flat(expected), flat(got)
    if want is not None and have is not None and want.size == have.size > limit:
        differ = np.flatnonzero(~np.isclose(want, have, rtol=1e-4, atol=1e-6, equal_nan=True))
        if len(differ):
            note = f"\n      (the {len(differ)} of {want.size} values that differ)"
            pick = {k: flat(v) for k, v in rows.items()}
            rows = {k: v if pick[k] is None or pick[k].size != want.size
                    else pick[k][differ[:limit]] for k, v in rows.items()}

    def one(v):
        if hasattr(v, "shape") and hasattr(v, "flatten"):
            return (f"shape {tuple(v.shape)} " if len(v.shape) > 1 else "") + _fmt(v, limit)
        return f"{v:.6g}" if isinstance(v, float) else str(v)
    return "".join(f"\n      {k + ':':<10}{one(v)}" for k, v in rows.items()) + note


def _call(run: Callable, hint: str, input, expected):
    """``run()``; a crash (a typical mistake here) becomes a failure that says what to do."""
    try:
        return run()
    except (NotImplementedError, AssertionError):
        raise
    except Exception as e:
        raise AssertionError(f"your function crashed — {hint}"
                             + _show(input, expected, f"{type(e).__name__}: {e}")) from None

def _close_to_scale(got, want, tol: float = 1e-5) -> bool:
    """Equal to ``tol`` of the output's largest magnitude: float32 sums of large terms carry
    rounding of that size, whichever correct order the learner wrote them in."""
    import torch
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=0,
                                                           atol=tol * float(want.abs().max())))


# The exercises, one module per part of the workbook, each registering its own in EXERCISES;
# ``check.<exercise>`` is the public name.
from .check_importance import taylor_scores  # noqa: E402
from .check_layers import factor_conv, int_linear, kmeans_quantize  # noqa: E402
from .check_pipeline import choose_model, kd_loss, preprocess  # noqa: E402
from .check_pruning import csr_bytes, magnitude_mask, magnitude_threshold, prune_pair  # noqa: E402
from .check_quantization import fake_quant_ste, fold_bn, quantize_dequantize  # noqa: E402
