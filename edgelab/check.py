"""Exercise checkers: run the learner's function on small fixed tensors and say what is off.

Each checker takes the learner's function and returns the function the notebook should go on
with: the learner's when every case passes, else the reference implementation (so Run All
always works). A stub that raises ``NotImplementedError`` counts as "not attempted".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


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
