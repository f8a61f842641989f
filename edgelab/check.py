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


# -- 01_pruning ---------------------------------------------------------------------------

def _fmt(t) -> str:
    return "[" + ", ".join(f"{x:g}" for x in t.flatten().tolist()) + "]"


def _mask_cases():
    import torch

    def basic(fn):
        w = torch.tensor([[0.1, -0.9, 0.3], [-0.05, 0.7, -0.2]])
        m = fn(w, 0.5)
        assert isinstance(m, torch.Tensor) and m.dtype == torch.bool, \
            f"return a bool tensor (got {getattr(m, 'dtype', type(m))}); `abs(w) > t` gives one"
        assert m.shape == w.shape, f"the mask must have the weight's shape {tuple(w.shape)}, got {tuple(m.shape)}"
        expected = torch.tensor([[False, True, True], [False, True, False]])
        assert torch.equal(m, expected), (
            f"at rate 0.5 of {_fmt(w)} keep the 3 largest |w| (0.9, 0.7, 0.3); you kept "
            f"{_fmt(w[m])}" + (" — compare magnitudes, abs(w), not signed values"
                               if not bool(m[0, 1]) else ""))

    def ties(fn):
        w = torch.tensor([0.5, -0.5, 0.5, -0.5, 0.5, 0.5])
        m = fn(w, 0.5)
        assert int(m.sum()) == 3, (
            f"six equal magnitudes at rate 0.5: exactly 3 must stay, you kept {int(m.sum())}. "
            "Comparing with the threshold (`abs(w) > t`) drops every tied weight; "
            "choose the k to keep by counting (e.g. topk), not by comparing")

    def rate_zero(fn):
        w = torch.tensor([0.0, 1e-8, -3.0, 2.0])
        m = fn(w, 0.0)
        assert bool(m.all()), f"rate 0 keeps every weight, even tiny ones; you dropped {int((~m).sum())}"

    def rate_near_one(fn):
        w = torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)
        m = fn(w, 0.9)
        assert int(m.sum()) == 1 and bool(m[-1]), (
            f"rate 0.9 of 10 weights keeps exactly 1, the largest |w| (the last, -10); "
            f"you kept {_fmt(w[m])}")

    def rate_is_pruned_fraction(fn):
        w = torch.arange(1.0, 101.0)
        m = fn(w, 0.3)
        kept = int(m.sum())
        assert kept == 70, (f"rate 0.3 of 100 weights prunes 30 and keeps 70, you kept {kept}"
                            + (" — rate is the fraction removed, not kept" if kept == 30 else ""))

    return [("basic 2x3 tensor", basic), ("tied magnitudes", ties), ("rate 0", rate_zero),
            ("rate 0.9", rate_near_one), ("rate means pruned fraction", rate_is_pruned_fraction)]


def magnitude_mask(fn, quiet: bool = False):
    """Check ``fn(weight, rate) -> bool mask``; returns the function to carry on with."""
    from .prune import magnitude_mask as reference
    return verdict(run_cases("magnitude_mask", fn, _mask_cases()), fn, reference, quiet)


def _threshold_cases():
    import torch

    def basic(fn):
        w = torch.tensor([0.4, -0.1, 0.3, -0.2])
        t = float(fn(w, 0.5))
        assert abs(t - 0.2) < 1e-6, (
            f"rate 0.5 of {_fmt(w)}: the 2 smallest magnitudes are 0.1 and 0.2, so the "
            f"threshold (largest pruned |w|) is 0.2; you returned {t}"
            + (" — use magnitudes, abs(w)" if abs(t + 0.1) < 1e-6 or abs(t - 0.3) < 1e-6 else ""))

    def rate_zero(fn):
        t = float(fn(torch.tensor([0.5, -0.25, 1.0]), 0.0))
        assert t == 0.0, f"rate 0 prunes nothing: return 0.0, you returned {t}"

    def rate_near_one(fn):
        w = torch.arange(1.0, 11.0)
        t = float(fn(w, 0.9))
        assert abs(t - 9.0) < 1e-6, f"rate 0.9 of 1..10 prunes 9 weights, the largest being 9.0; you returned {t}"

    def rounding(fn):
        w = torch.arange(1.0, 8.0)  # 7 weights, rate 0.5 -> round(3.5) = 4 pruned
        t = float(fn(w, 0.5))
        assert abs(t - 4.0) < 1e-6, (
            f"7 weights at rate 0.5: k = round(0.5 * 7) = 4 are pruned, threshold 4.0; you returned {t}"
            + (" — int() truncates; use round()" if abs(t - 3.0) < 1e-6 else ""))

    return [("basic", basic), ("rate 0", rate_zero), ("rate 0.9", rate_near_one),
            ("k = round(rate * n)", rounding)]


def magnitude_threshold(fn, quiet: bool = False):
    """Check ``fn(weight, rate) -> float``: the largest pruned magnitude."""
    from .prune import magnitude_threshold as reference
    return verdict(run_cases("magnitude_threshold", fn, _threshold_cases()), fn, reference, quiet)
