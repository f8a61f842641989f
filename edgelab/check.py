"""Exercise checkers: run the learner's function on small fixed tensors and say what is off.

Each checker takes the learner's function and returns the function the notebook should go on
with: the learner's when every case passes, else the reference implementation (so Run All
always works). A stub that raises ``NotImplementedError`` counts as "not attempted". A failed
case names the likely mistake and shows its input, the expected result and what came back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Outcome", "run_cases", "verdict", "magnitude_mask", "magnitude_threshold",
           "quantize_dequantize", "kd_loss", "preprocess", "choose_model", "fold_bn", "factor_conv", "fake_quant_ste", "csr_bytes", "int_linear", "kmeans_quantize", "prune_pair"]


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


# -- 01_pruning ---------------------------------------------------------------------------

def _rounding_hint(n: int, rate: float, k: int) -> str:
    """Name the rounding behind ``k`` pruned weights when it is not the reference's ``round``:
    Python's round (like torch.round) sends a half to the even number, round(2.5) = 2."""
    x = rate * n
    if k == int(x) != round(x):
        return " — int() truncates; use round()"
    if x % 1 == 0.5 and k == math.floor(x + 0.5) != round(x):
        return (" — round() sends a half to the even number (round(2.5) = 2, as torch.round "
                "does); floor(x + 0.5) rounds it up")
    if k == math.ceil(x) != round(x):
        return " — that rounds up (ceil); use round()"
    return ""


def _conv_weight():
    """A (2, 2, 3, 3) conv weight whose 36 magnitudes are 0.01..0.36 in a scrambled order."""
    import torch
    i = torch.arange(36)
    mags = ((7 * i + 3) % 36 + 1).float()               # 7 is prime to 36: a permutation
    return (mags * torch.where(i % 3 == 0, -1.0, 1.0) / 100).reshape(2, 2, 3, 3)


def _mask_cases():
    import torch

    def mask_of(fn, w, rate, expected):
        m = _call(lambda: fn(w.clone(), rate), "rank every weight of the tensor together "
                  "(w.abs().flatten()), then give the mask the weight's shape (mask.view_as(w))",
                  w, expected)
        assert isinstance(m, torch.Tensor) and m.dtype == torch.bool, (
            f"return a bool tensor (got {getattr(m, 'dtype', type(m))}); `abs(w) > t` gives one"
            + _show(w, expected, m))
        assert m.shape == w.shape, (f"the mask must have the weight's shape {tuple(w.shape)}, got "
                                    f"{tuple(m.shape)}: return mask.view_as(w)"
                                    + _show(w, expected, m))
        return m

    def basic(fn):
        w = torch.tensor([[0.1, -0.9, 0.3], [-0.05, 0.7, -0.2]])
        expected = torch.tensor([[False, True, True], [False, True, False]])
        m = mask_of(fn, w, 0.5, expected)
        hint = (" — you kept the smallest: prune the smallest |w|, keep the largest"
                if torch.equal(m, ~expected) else
                " — compare magnitudes, abs(w), not signed values" if not bool(m[0, 1]) else "")
        assert torch.equal(m, expected), (
            f"at rate 0.5 keep the 3 largest |w| (0.9, 0.7, 0.3); you kept {_fmt(w[m])}{hint}"
            + _show(w, expected, m))

    def ties(fn):
        w = torch.tensor([0.5, -0.5, 0.5, -0.5, 0.5, 0.5])
        m = mask_of(fn, w, 0.5, "any 3 of the 6 kept")
        assert int(m.sum()) == 3, (
            f"six equal magnitudes at rate 0.5: exactly 3 must stay, you kept {int(m.sum())}. "
            "Comparing with the threshold (`abs(w) > t`) drops every tied weight; "
            "choose the k to keep by counting (e.g. topk), not by comparing"
            + _show(w, "any 3 of the 6 kept", m))

    def rate_zero(fn):
        w = torch.tensor([0.0, 1e-8, -3.0, 2.0])
        m = mask_of(fn, w, 0.0, torch.ones(4, dtype=torch.bool))
        assert bool(m.all()), (f"rate 0 keeps every weight, even tiny ones; you dropped "
                               f"{int((~m).sum())}" + _show(w, torch.ones(4, dtype=torch.bool), m))

    def rate_near_one(fn):
        w = torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)
        expected = torch.arange(10) == 9
        m = mask_of(fn, w, 0.9, expected)
        assert torch.equal(m, expected), (
            f"rate 0.9 of 10 weights keeps exactly 1, the largest |w| (the last, -10); "
            f"you kept {_fmt(w[m])}" + _show(w, expected, m))

    def rate_is_pruned_fraction(fn):
        w = torch.arange(1.0, 101.0)
        kept = int(mask_of(fn, w, 0.3, w > 30).sum())
        assert kept == 70, (f"rate 0.3 of 100 weights prunes 30 and keeps 70, you kept {kept}"
                            + (" — rate is the fraction removed, not kept" if kept == 30 else "")
                            + _show("1, 2, …, 100 at rate 0.3", "70 kept", f"{kept} kept"))

    def rounding(fn):
        # rate * n = 3.6, 2.1 and 2.5: truncating, rounding up and rounding halves up all differ
        for n, rate in ((9, 0.4), (7, 0.3), (5, 0.5)):
            w = torch.arange(1.0, n + 1.0)
            want = round(rate * n)
            expected = w > want
            m = mask_of(fn, w, rate, expected)
            k = n - int(m.sum())
            assert torch.equal(m, expected), (
                f"{n} weights at rate {rate}: k = round({rate * n:g}) = {want} are pruned, "
                f"{n - want} kept; you pruned {k}" + _rounding_hint(n, rate, k)
                + _show(f"{_fmt(w)} at rate {rate}", expected, m))

    def conv_weight(fn):
        w = _conv_weight()
        expected = w.abs() > 0.225                          # 36 - round(21.6) = 14 kept
        m = mask_of(fn, w, 0.6, expected)
        k = 36 - int(m.sum())
        assert torch.equal(m, expected), (
            f"a (2, 2, 3, 3) conv weight at rate 0.6: prune round(21.6) = 22 of its 36 weights "
            f"and keep the 14 largest |w| of the whole tensor; you pruned {k}"
            + (_rounding_hint(36, 0.6, k) or " — rank all 36 together, not per filter or row")
            + _show(w, expected, m))

    return [("basic 2x3 tensor", basic), ("tied magnitudes", ties), ("rate 0", rate_zero),
            ("rate 0.9", rate_near_one), ("rate means pruned fraction", rate_is_pruned_fraction),
            ("k = round(rate * n)", rounding), ("a 4-D conv weight", conv_weight)]


def magnitude_mask(fn, quiet: bool = False):
    """Check ``fn(weight, rate) -> bool mask``; returns the function to carry on with."""
    from .prune import magnitude_mask as reference
    return verdict(run_cases("magnitude_mask", fn, _mask_cases()), fn, reference, quiet)


def _threshold_cases():
    import torch

    def threshold(fn, w, rate, want, hint="rank every weight of the tensor together: "
                  "w.abs().flatten()"):
        return _call(lambda: float(fn(w.clone(), rate)), hint, f"{_fmt(w)} at rate {rate}", want)

    def basic(fn):
        w = torch.tensor([0.4, -0.1, 0.3, -0.2])
        t = threshold(fn, w, 0.5, 0.2)
        assert abs(t - 0.2) < 1e-6, (
            f"rate 0.5: the 2 smallest magnitudes are 0.1 and 0.2, so the threshold (largest "
            f"pruned |w|) is 0.2; you returned {t:g}"
            + (" — use magnitudes, abs(w)" if abs(t + 0.1) < 1e-6 else "")
            + (" — that is the smallest kept |w|, not the largest pruned (kthvalue(k))"
               if abs(t - 0.3) < 1e-6 else "") + _show(w, 0.2, t))

    def rate_zero(fn):
        w = torch.tensor([0.5, -0.25, 1.0])
        t = threshold(fn, w, 0.0, 0.0, "rate 0 prunes nothing: return 0.0 (there is no 0-th "
                      "smallest)")
        assert t == 0.0, f"rate 0 prunes nothing: return 0.0, you returned {t}" + _show(w, 0.0, t)

    def rate_near_one(fn):
        w = torch.arange(1.0, 11.0)
        t = threshold(fn, w, 0.9, 9.0)
        assert abs(t - 9.0) < 1e-6, (
            f"rate 0.9 of 1..10 prunes 9 weights, the largest being 9.0; you returned {t:g}"
            + (" — rate is the fraction removed, not kept" if abs(t - 1.0) < 1e-6 else "")
            + _show(w, 9.0, t))

    def rounding(fn):
        # weights 1..n, so the threshold is k itself; rate * n = 3.5, 2.1, 2.5
        for n, rate in ((7, 0.5), (7, 0.3), (5, 0.5)):
            w = torch.arange(1.0, n + 1.0)
            want = round(rate * n)
            t = threshold(fn, w, rate, float(want))
            assert abs(t - want) < 1e-6, (
                f"{n} weights at rate {rate}: k = round({rate * n:g}) = {want} are pruned, "
                f"threshold {want:.1f}; you returned {t:g}" + _rounding_hint(n, rate, round(t))
                + _show(f"{_fmt(w)} at rate {rate}", float(want), t))

    def conv_weight(fn):
        w = _conv_weight()
        t = threshold(fn, w, 0.6, 0.22)
        assert abs(t - 0.22) < 1e-6, (
            f"a (2, 2, 3, 3) conv weight at rate 0.6: round(21.6) = 22 of its 36 weights are "
            f"pruned, the largest of them |w| = 0.22; you returned {t:g}"
            + (" — int() truncates; use round()" if abs(t - 0.21) < 1e-6 else "")
            + _show(w, 0.22, t))

    return [("basic", basic), ("rate 0", rate_zero), ("rate 0.9", rate_near_one),
            ("k = round(rate * n)", rounding), ("a 4-D conv weight", conv_weight)]


def magnitude_threshold(fn, quiet: bool = False):
    """Check ``fn(weight, rate) -> float``: the largest pruned magnitude."""
    from .prune import magnitude_threshold as reference
    return verdict(run_cases("magnitude_threshold", fn, _threshold_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 02_quantization: quantize, then dequantize (fake quantization), asymmetric, per tensor or axis
# --------------------------------------------------------------------------------------------

def _qdq_cases():
    import torch

    from . import qmath

    def ref(x, bits, axis=None):
        return qmath.quantize_dequantize(x, bits, axis=axis)

    def close(a, b, tol=1e-6):
        return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol, rtol=0))

    def returns_floats_of_the_same_shape(fn):
        x = torch.linspace(-1.0, 2.0, 12).reshape(3, 4)
        out = fn(x.clone(), 8)
        shown = _show(x, ref(x, 8), out)
        assert isinstance(out, torch.Tensor), f"returned {type(out).__name__}, not a tensor" + shown
        assert out.shape == x.shape, f"shape {tuple(out.shape)}, expected {tuple(x.shape)}" + shown
        assert out.is_floating_point(), (f"returned {out.dtype}: dequantize back to floats "
                                         "((q - zero_point) * scale)" + shown)

    def leaves_the_input_alone(fn):
        x = torch.tensor([-0.7, 0.1, 0.45, 1.3])
        before = x.clone()
        fn(x, 4)
        assert torch.equal(x, before), ("the input tensor was modified in place"
                                        + _show(before, before, x))

    def zero_is_exact(fn):
        # range [-0.37, 1.0]: -min/scale = 4.05 is not an integer. The zero point must be
        # rounded to one (4), else 0.0 falls between two levels or the levels drift off the
        # grid of whole steps from 0.
        x = torch.tensor([-0.37, 0.0, 0.2, 0.0, 1.0])
        out = fn(x.clone(), 4)
        shown = _show(x, ref(x, 4), out)
        assert out[1] == 0 and out[3] == 0, (
            f"0.0 came back as {out[1].item():.4g}: round the zero point to an integer, so that "
            "0.0 is exactly one of the levels" + shown)
        steps = out / (1.37 / 15)
        off = (steps - steps.round()).abs().max().item()
        assert off < 1e-3, (
            f"a value came back {off:.2f} of a step off the grid of whole steps from 0.0: round "
            "the zero point to an integer before using it, so that every code is an integer"
            + shown)
        # ranges without 0: [0.5, 2] and [-2, -0.5] must grow to [0, 2] and [-2, 0]
        for x in (torch.tensor([0.5, 0.8, 1.1, 2.0]), torch.tensor([-2.0, -1.1, -0.8, -0.5])):
            out, want = fn(x.clone(), 2), ref(x, 2)
            edge = int(x.abs().argmin())           # exact only if the range stopped at it
            assert close(out, want, 1e-5), (
                f"values that are all {'positive' if x[0] > 0 else 'negative'} came back wrong"
                + (" — widen the range to include 0, lo = min(x.min(), 0) and hi = max(x.max(), "
                   "0): else 0.0 (ReLU outputs, padding) is not one of the levels"
                   if abs(out[edge] - x[edge]) < 1e-6 else "") + _show(x, want, out))

    def rounds_to_nearest(fn):
        x = torch.linspace(-1.0, 1.2, 101)
        out = fn(x.clone(), 4)
        scale = 2.2 / 15
        err = (out - x).abs().max().item()
        assert err <= scale / 2 * (1 + 1e-4), (
            f"an error of {err:.3f} where at most half a step ({scale / 2:.3f}) is possible: "
            "round to the nearest level (torch.round), not floor or truncate, and spread the "
            "range over 2**bits - 1 steps" + _show(x, ref(x, 4), out))

    def uses_all_levels_and_no_more(fn):
        x = torch.linspace(-1.0, 3.0, 1000)
        for bits in (2, 3, 8):
            levels = fn(x.clone(), bits).unique().numel()
            shown = _show(input=f"1000 values from -1 to 3 at {bits} bits",
                          expected=f"{2 ** bits} distinct values", got=f"{levels}")
            assert levels <= 2 ** bits, (
                f"{levels} distinct values at {bits} bits, more than 2**{bits} = {2 ** bits}: "
                "clamp the integers to [0, 2**bits - 1]" + shown)
            assert levels >= 2 ** bits - 1, (
                f"only {levels} distinct values at {bits} bits: the scale should spread the "
                "range over all 2**bits - 1 steps, scale = (max - min) / (2**bits - 1)" + shown)

    def clamps_to_the_top_code(fn):
        # scale 1, zero point round(1.5) = 2: the top value 1.5 rounds to 2, plus 2 = code 4,
        # one past the top code 3 of 2 bits. Only the clamp keeps it at 3, i.e. 1.0.
        x = torch.tensor([-1.5, 0.0, 1.45, 1.5])
        out = fn(x.clone(), 2)
        top = out.max().item()
        assert abs(top - 1.0) < 1e-5, (
            f"the largest value came back as {top:.4g}, expected 1.0: after rounding and adding "
            "the zero point, clamp the codes to [0, 2**bits - 1] (here the top value lands on "
            "code 4 of a 2-bit range 0..3)" + _show(x, ref(x, 2), out))

    def constant_zero(fn):
        x = torch.zeros(3, 3)
        out = fn(x.clone(), 8)
        assert torch.isfinite(out).all(), ("an all-zero tensor (a pruned layer) gave NaN or inf: "
                                           "guard against a scale of 0" + _show(x, x, out))
        assert torch.equal(out, x), "an all-zero tensor comes back as zeros" + _show(x, x, out)
        w = torch.stack([torch.linspace(-1.0, 1.0, 4), torch.zeros(4),
                         torch.linspace(-0.2, 0.4, 4)]).reshape(3, 1, 2, 2)
        out = fn(w.clone(), 4, axis=0)
        assert torch.isfinite(out).all() and torch.equal(out[1], w[1]), (
            "one all-zero filter (a pruned one) with axis=0 came back as "
            f"{_fmt(out[1])}, not zeros: guard each slice's scale of 0, e.g. "
            "torch.where(scale > 0, scale, 1), not only an all-zero tensor"
            + _show(w, ref(w, 4, axis=0), out))

    def per_channel_axis_0(fn):
        # a conv weight (out, in, k, k): one filter 1000x smaller than the other
        w = torch.stack([torch.linspace(-1.0, 1.0, 18).reshape(2, 3, 3),
                         torch.linspace(-1e-3, 2e-3, 18).reshape(2, 3, 3)])
        out, want = fn(w.clone(), 4, axis=0), ref(w, 4, axis=0)
        assert out.shape == w.shape, (f"shape {tuple(out.shape)}, expected {tuple(w.shape)}"
                                      + _show(w, want, out))
        small_err = (out[1] - w[1]).abs().max().item()
        step = 3e-3 / 15
        assert small_err <= step / 2 + 1e-7, (
            f"with axis=0 the small filter's error is {small_err:.2e}, more than half its own "
            f"step ({step / 2:.1e}): each slice along `axis` needs its own min, max, scale and "
            "zero point (reduce over every other dimension, keepdim=True)"
            + _show(w[1], want[1], out[1]))

    def per_channel_axis_1(fn):
        x = torch.tensor([[0.0, -10.0, 0.001], [1.0, 9.0, -0.002], [0.5, 0.0, 0.0]])
        out = fn(x.clone(), 6, axis=1)
        shown = _show(x, ref(x, 6, axis=1), out)
        assert out.shape == x.shape, f"shape {tuple(out.shape)}, expected {tuple(x.shape)}" + shown
        for col, rng in ((0, 1.0), (1, 19.0), (2, 0.003)):
            err = (out[:, col] - x[:, col]).abs().max().item()
            assert err <= rng / 63 / 2 * (1 + 1e-4), (
                f"with axis=1, column {col} is off by {err:.3g}: the scales must be per column "
                "here (axis=1), not per row or per tensor" + shown)

    def per_tensor_by_default(fn):
        x = torch.tensor([[-1.0, 0.0, 1.2], [0.01, 0.02, 0.03]])
        out = fn(x.clone(), 4)
        assert torch.equal(out[1], torch.zeros(3)), (
            "with axis=None one scale covers the whole tensor, so the small second row "
            f"(0.01..0.03) rounds to 0, but it came back as {out[1].tolist()}"
            + _show(x, ref(x, 4), out))

    return [
        ("returns floats of the same shape", returns_floats_of_the_same_shape),
        ("leaves the input alone", leaves_the_input_alone),
        ("0.0 is exactly representable", zero_is_exact),
        ("rounds to the nearest level", rounds_to_nearest),
        ("2**bits levels, no more", uses_all_levels_and_no_more),
        ("codes clamped to [0, 2**bits - 1]", clamps_to_the_top_code),
        ("an all-zero tensor or filter", constant_zero),
        ("one scale per tensor by default", per_tensor_by_default),
        ("per channel along axis 0 (conv filters)", per_channel_axis_0),
        ("per channel along axis 1", per_channel_axis_1),
    ]


def quantize_dequantize(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(x, bits, axis=None)``: asymmetric fake quantization (quantize to
    ``bits``-bit unsigned codes, then dequantize), per tensor or per slice along ``axis``."""
    from . import qmath

    def reference(x, bits, axis=None):
        return qmath.quantize_dequantize(x, bits, axis=axis, symmetric=False)

    return verdict(run_cases("quantize_dequantize", fn, _qdq_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 03_distillation: the knowledge-distillation loss
# --------------------------------------------------------------------------------------------

def _kd_variant(s, t, y, T, alpha, *, ce=False, Ts=None, Tt=None, scale=None, reverse=False,
                per_element=False, probs_as_log=False, hard_T=1.0, weights=None):
    """The reference loss (all defaults) or one typical mistake, for the hints.

    ``ce=True`` writes the soft term as the soft cross-entropy -sum(p_teacher * log p_student)
    instead of KL(p_teacher || p_student): the two differ by the teacher's entropy, which does
    not depend on the student, so they have the same gradient and train the same student."""
    import torch.nn.functional as F

    log_q = F.log_softmax(s / (T if Ts is None else Ts), 1)                  # the student
    log_p = F.log_softmax(t.detach() / (T if Tt is None else Tt), 1)         # the teacher
    if probs_as_log:
        log_q = log_q.exp()          # softmax where F.kl_div wants log-probabilities
    log_target, log_input = (log_q, log_p) if reverse else (log_p, log_q)
    target = log_target.exp()
    per = -target * log_input if ce else target * (log_target - log_input)
    soft = per.sum() / (per.numel() if per_element else per.shape[0])
    soft = soft * (T * T if scale is None else scale)
    w_soft, w_hard = weights or (alpha, 1 - alpha)
    return w_soft * soft + w_hard * F.cross_entropy(s / hard_T, y)


_MIX = "weigh the terms: alpha * soft + (1 - alpha) * hard"
_NAN = ("the loss is NaN or inf: F.kl_div's target must be probabilities (softmax), or "
        "log-probabilities with log_target=True")
_KD_MISTAKES = [   # (what goes wrong, as _kd_variant's arguments for T and alpha; the hint)
    (lambda T, a: dict(reverse=True), "that is KL(student || teacher): F.kl_div(input, target) "
     "wants the student's log-probabilities as input and the teacher's probabilities as target"),
    (lambda T, a: dict(scale=1.0), "multiply the soft term by T^2: softening shrinks its "
     "gradients by 1/T^2"),
    (lambda T, a: dict(scale=T), "multiply the soft term by T^2 (T * T), not by T"),
    (lambda T, a: dict(Ts=1.0, Tt=1.0), "divide the logits by T before the softmax (both "
     "student and teacher)"),
    (lambda T, a: dict(Tt=1.0), "divide the teacher's logits by T as well"),
    (lambda T, a: dict(Ts=1.0), "divide the student's logits by T as well"),
    (lambda T, a: dict(per_element=True), "average over the batch (reduction='batchmean'), "
     "not over every element"),
    (lambda T, a: dict(probs_as_log=True), "F.kl_div's first argument must be the student's "
     "log-probabilities (log_softmax), not probabilities (softmax)"),
    (lambda T, a: dict(hard_T=T), "the hard term uses the student's logits without T"),
    (lambda T, a: dict(weights=(1 - a, a)), "alpha weighs the teacher's soft term, 1 - alpha "
     "the labels, not the other way round"),
    (lambda T, a: dict(weights=(a, 0.0)), "add the hard term, (1 - alpha) * cross-entropy "
     "with the labels"),
    (lambda T, a: dict(weights=(1.0, 1 - a)), _MIX),
    (lambda T, a: dict(weights=(a, 1.0)), _MIX),
    (lambda T, a: dict(weights=(1.0, 1.0)), _MIX),
]


def _kd_cases():
    import torch

    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.5, 0.3]])
    t = torch.tensor([[4.0, 1.0, -2.0], [-1.0, 3.0, 2.0]])
    y = torch.tensor([0, 2])

    def given(T, alpha):
        return f"student {_fmt(s)}, teacher {_fmt(t)}, labels [0, 2], T = {T:g}, alpha = {alpha:g}"

    def value(fn, T, alpha):
        out = fn(s.clone(), t.clone(), y.clone(), T, alpha)
        assert isinstance(out, torch.Tensor) and out.dim() == 0, (
            f"return one number as a 0-dim tensor (got {getattr(out, 'shape', type(out))})"
            + _show(given(T, alpha), "a 0-dim tensor", out))
        return out.item()

    def hint(T, alpha, matches) -> str:
        """The hint of the first typical mistake, in either form, for which ``matches(loss_of)``
        (``loss_of`` maps the student's logits to that mistake's loss)."""
        for args, text in _KD_MISTAKES:
            for ce in (False, True):
                if matches(lambda ss, ce=ce, args=args:
                           _kd_variant(ss, t, y, T, alpha, ce=ce, **args(T, alpha))):
                    return f" — {text}"
        return ""

    def check_value(fn, T, alpha, what):
        """Accept the KL form and the soft cross-entropy form (the KL plus alpha * T^2 times
        the teacher's entropy, a constant): both train the student the same way."""
        got = value(fn, T, alpha)
        want, entropy_form = (_kd_variant(s, t, y, T, alpha, ce=ce).item() for ce in (False, True))
        tol = 1e-5 * max(1.0, abs(want))
        if abs(got - want) <= tol or abs(got - entropy_form) <= tol:
            return
        why = (f" — {_NAN}" if not math.isfinite(got) else
               hint(T, alpha, lambda v: abs(v(s).item() - got) <= tol))
        either = (f" (or {entropy_form:.5f} written as a soft cross-entropy)"
                  if abs(entropy_form - want) > tol else "")
        assert False, (f"T = {T:g}, alpha = {alpha:g} should give {what} = {want:.5f}{either}, "
                       f"got {got:.5f}{why}" + _show(given(T, alpha), want, got))

    def t1_is_plain_kl(fn):
        check_value(fn, 1.0, 1.0, "KL(teacher || student) of the plain softmaxes")

    def t_squared(fn):
        check_value(fn, 4.0, 1.0, "T^2 * KL at T = 4")

    def alpha_zero_is_cross_entropy(fn):
        check_value(fn, 4.0, 0.0, "the plain cross-entropy with the labels")

    def alpha_mixes(fn):
        check_value(fn, 2.0, 0.25, "0.25 * T^2 * KL + 0.75 * CE")

    def student_gradient(fn):
        T, alpha = 4.0, 0.7

        def grad(loss_of):
            ss = s.clone().requires_grad_(True)
            loss_of(ss).backward()
            return ss.grad

        want, ss = grad(lambda ss: _kd_variant(ss, t, y, T, alpha)), s.clone().requires_grad_(True)
        loss = fn(ss, t.clone(), y.clone(), T, alpha)
        loss.backward()
        got = ss.grad
        assert got is not None, ("the student's logits get no gradient"
                                 + _show(given(T, alpha), want, "no gradient"))
        if not torch.allclose(got, want, atol=1e-5, rtol=1e-4):
            why = f" — {_NAN}" if not torch.isfinite(loss) else hint(
                T, alpha, lambda v: torch.allclose(grad(v), got, atol=1e-5, rtol=1e-4))
            assert False, ("the gradient with respect to the student's logits is off" + why
                           + _show(given(T, alpha), want, got))

    def teacher_gets_no_gradient(fn):
        tt = t.clone().requires_grad_(True)
        ss = s.clone().requires_grad_(True)
        fn(ss, tt, y, 4.0, 0.9).backward()
        assert tt.grad is None or not tt.grad.abs().sum() > 0, (
            "the loss sends gradients into the teacher's logits: .detach() them (the teacher is "
            "frozen)" + _show(given(4.0, 0.9), "no gradient", tt.grad))
        assert ss.grad is not None and ss.grad.abs().sum() > 0, (
            "the student's logits get no gradient" + _show(given(4.0, 0.9), "a gradient", ss.grad))

    return [("T = 1 gives KL (or soft cross-entropy) of the plain softmaxes", t1_is_plain_kl),
            ("the soft term is scaled by T^2", t_squared),
            ("alpha = 0 gives pure cross-entropy", alpha_zero_is_cross_entropy),
            ("alpha mixes the two terms", alpha_mixes),
            ("the student's gradient", student_gradient),
            ("the teacher gets no gradient", teacher_gets_no_gradient)]


def kd_loss(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(student_logits, teacher_logits, labels, T, alpha)``.

    The soft term may be written as KL(p_teacher || p_student) or as the soft cross-entropy
    -sum(p_teacher * log p_student): they differ by the teacher's entropy, a constant for the
    student, so their values differ by alpha * T^2 * H(p_teacher) and their gradients with
    respect to the student's logits are equal. The checker accepts either value and compares
    that gradient."""
    from .distill import kd_loss as reference
    return verdict(run_cases("kd_loss", fn, _kd_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 05_deploy_pi: the preprocessing the Pi must repeat
# --------------------------------------------------------------------------------------------

def _preprocess_cases():
    import numpy as np

    pixels = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)     # (1, 2, 2): 0, 1, 0.2, 0.4
    mean, std = 0.2, 0.4
    want = np.array([[[[-0.5, 2.0], [0.0, 0.5]]]], dtype=np.float32)
    given = f"pixels {_fmt(pixels)} of shape (1, 2, 2), mean {mean}, std {std}"

    def returns_float32_nchw(fn):
        x = fn(pixels.copy(), mean, std)
        assert isinstance(x, np.ndarray), (
            f"return a NumPy array (got {type(x).__name__}): ONNX Runtime is fed NumPy"
            + _show(given, want, x))
        assert x.dtype == np.float32, (
            f"return float32 (got {x.dtype}): the model's input is tensor(float), and ONNX "
            "Runtime refuses float64 with 'Unexpected input data type'; use .astype(np.float32)"
            + _show(given, "float32", x.dtype))
        assert x.shape == (1, 1, 2, 2), (
            f"(N, H, W) = (1, 2, 2) pixels must become (N, 1, H, W) = (1, 1, 2, 2), got "
            f"{x.shape}: add the channel axis, e.g. x[:, None]"
            + (" — it goes second, after N, not last" if x.shape == (1, 2, 2, 1) else "")
            + _show(given, want, x))

    def values(fn):
        x = np.asarray(fn(pixels.copy(), mean, std), dtype=np.float64).reshape(want.shape)
        if np.allclose(x, want, atol=1e-6):
            return
        raw = pixels[:, None].astype(np.float64)
        hints = [(raw, "these are the raw pixels"),
                 ((raw - mean) / std, "divide by 255 first: the mean and std are for pixels in [0, 1]"),
                 ((raw / 256 - mean) / std, "divide by 255, the largest uint8 value, not 256"),
                 (raw / 255, "then subtract the mean and divide by the std (labels.json has both)"),
                 ((raw / 255 - mean) * std, "divide by the std, do not multiply"),
                 (raw / 255 - mean, "divide by the std as well"),
                 ((raw / 255) / std - mean, "subtract the mean before dividing by the std")]
        hint = next((h for v, h in hints if np.allclose(x, v, atol=1e-6)), "")
        assert False, ("the values are off, (pixels / 255 - mean) / std"
                       + (f" — {hint}" if hint else "") + _show(given, want, x))

    def constants_not_per_image(fn):
        white = np.full((2, 2, 2), 255, dtype=np.uint8)
        white[1] = 51
        x = np.asarray(fn(white.copy(), mean, std), dtype=np.float64)
        assert np.isfinite(x).all() and np.allclose(x[0], 2.0) and np.allclose(x[1], 0.0), (
            "an all-white image must give (1 - 0.2) / 0.4 = 2.0 everywhere, and an all-0.2 one "
            "0.0: use the training set's mean and std (the arguments), never statistics of the "
            "image itself" + _show(white, "[2, 2, 2, 2, 0, 0, 0, 0]", x))

    def leaves_input_alone(fn):
        p = pixels.copy()
        fn(p, mean, std)
        assert np.array_equal(p, pixels), ("do not change the caller's pixels in place"
                                           + _show(pixels, pixels, p))

    def any_batch(fn):
        rng = np.random.default_rng(0)
        p = rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8)
        x = fn(p.copy(), 0.2860, 0.3530)
        ref = (p[:, None].astype(np.float64) / 255 - 0.2860) / 0.3530
        assert np.shape(x) == (3, 1, 5, 4), (f"3 images of 5x4 should give (3, 1, 5, 4), got "
                                             f"{np.shape(x)}" + _show(p, ref, x))
        assert np.allclose(x, ref, atol=1e-5), ("a batch of 3 random images is off: each image "
                                                "on its own" + _show(p[:, None], ref, x))

    return [("float32, (N, 1, H, W)", returns_float32_nchw), ("values", values),
            ("the training set's constants", constants_not_per_image),
            ("input unchanged", leaves_input_alone), ("any batch and size", any_batch)]


def preprocess(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(pixels, mean, std)``: uint8 (N, H, W) -> float32 (N, 1, H, W),
    ``(pixels / 255 - mean) / std``, as the bundle's predict.py does after reading a file."""
    import numpy as np

    def reference(pixels, mean, std):
        x = pixels.astype(np.float32) / np.float32(255.0)
        return ((x - np.float32(mean)) / np.float32(std))[:, None]

    return verdict(run_cases("preprocess", fn, _preprocess_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 06_pipeline: choosing the model to ship
# --------------------------------------------------------------------------------------------

def _record(name, val, test, size, ms):
    return {"name": name, "val_accuracy": val, "accuracy": test, "bytes": size,
            "latency_b1_ms": ms}


def _choose_cases():
    from .report import BARS

    teacher = _record("teacher", 0.930, 0.937, 40_000_000, 3.0)
    bar = "frontier"
    b = BARS[bar]
    small, fast = 40_000_000 // (2 * b["smaller"]), 3.0 / (2 * b["faster"])   # 2x inside the bar

    def chosen(fn, records, expect, hint):
        names = [r["name"] for r in records]
        got = _call(lambda: fn(records, teacher, bar), "return (record, reason) or (None, reason)",
                    names, expect)
        assert isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], str) and got[1], (
            "return a pair: the record (or None) and a sentence saying why"
            + _show(names, f"({expect}, 'why')", got))
        name = None if got[0] is None else got[0].get("name")
        assert name == expect, hint + _show(
            "; ".join(f"{r['name']}: val {r['val_accuracy']:.3f} test {r['accuracy']:.3f} "
                      f"{r['bytes']} B {r['latency_b1_ms']:g} ms" for r in records),
            expect, name)

    def most_accurate_on_val(fn):
        rs = [teacher, _record("a", 0.929, 0.931, small, fast), _record("b", 0.928, 0.936, small, fast / 2)]
        chosen(fn, rs, "a", "of the models meeting the bar, ship the most accurate *on validation* "
               "(not on test, and not the fastest)")

    def faster_of_a_tie(fn):
        rs = [teacher, _record("a", 0.929, 0.931, small, fast), _record("b", 0.929, 0.931, small, fast / 2)]
        chosen(fn, rs, "b", "a tie on validation accuracy goes to the faster model")

    def validation_decides(fn):
        # "t" beats the bar on test but loses 0.5 pt on validation: it must not be chosen
        rs = [teacher, _record("t", 0.925, 0.936, small, fast), _record("v", 0.928, 0.920, small, fast)]
        chosen(fn, rs, "v", "judge the bar's accuracy on validation: the test split only reports")

    def every_part_of_the_bar(fn):
        rs = [teacher, _record("big", 0.930, 0.937, 40_000_000 // (b["smaller"] // 2), fast),
              _record("slow", 0.930, 0.937, small, 3.0 / (b["faster"] / 2)),
              _record("ok", 0.928, 0.930, small, fast)]
        chosen(fn, rs, "ok", "the bar is all of: times smaller, times faster and points lost")

    def nothing_meets(fn):
        rs = [teacher, _record("close", 0.925, 0.930, small, fast)]
        chosen(fn, rs, None, "when no model meets the bar, return None and say so: shipping the "
               "best of the rest would be moving the bar")

    return [("the most accurate on validation", most_accurate_on_val),
            ("a tie", faster_of_a_tie), ("validation, not test", validation_decides),
            ("size, speed and accuracy together", every_part_of_the_bar),
            ("no model meets the bar", nothing_meets)]


def choose_model(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(records, teacher, bar) -> (record | None, why)``: the model to
    ship is chosen on validation (``report.meets(r, teacher, bar, "val")``), most accurate
    there, the faster of a tie; None when nothing meets the bar."""
    from .report import choose as reference
    return verdict(run_cases("choose_model", fn, _choose_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 02_quantization: folding a batch norm into the convolution before it
# --------------------------------------------------------------------------------------------

def _bn_pair(bias: bool, seed: int = 0, eps: float = 1e-5):
    """A 3x3 conv (2 -> 3 channels, stride 2, padding 1) and an eval-mode batch norm whose
    statistics are far from the identity: mean, var, gamma (one negative) and beta all matter."""
    import torch
    import torch.nn as nn

    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=bias)
    bn = nn.BatchNorm2d(3, eps=eps)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        if bias:
            conv.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([0.04, 4.0, 1e-3]))   # the last one: eps matters
        bn.weight.copy_(torch.tensor([2.0, -0.5, 1.5]))
        bn.bias.copy_(torch.tensor([0.3, 1.0, -0.7]))
    return conv.eval(), bn.eval()


def _close_to_scale(got, want, tol: float = 1e-5) -> bool:
    """Equal to ``tol`` of the output's largest magnitude: float32 sums of large terms carry
    rounding of that size, whichever correct order the learner wrote them in."""
    import torch
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=0,
                                                           atol=tol * float(want.abs().max())))


def _fold_cases():
    import torch
    import torch.nn as nn

    x = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(1))

    def folded_output(fn, bias):
        conv, bn = _bn_pair(bias)
        with torch.no_grad():
            want = bn(conv(x))
        out = _call(lambda: fn(conv, bn), "return a new nn.Conv2d with a bias", "conv, bn", want)
        assert isinstance(out, nn.Conv2d), (f"returned {type(out).__name__}: return the folded "
                                            "nn.Conv2d" + _show("conv, bn", "nn.Conv2d", out))
        assert out.stride == conv.stride and out.padding == conv.padding, (
            "keep the conv's stride and padding" + _show("stride 2, padding 1",
                                                         "(2, 2), (1, 1)", (out.stride, out.padding)))
        with torch.no_grad():
            got = out.eval()(x)
        return conv, bn, want, got

    def hint(conv, bn, got):
        """Name the mistake from what the output looks like."""
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        b = conv.bias if conv.bias is not None else torch.zeros(3)
        with torch.no_grad():
            y = nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding)
            guesses = {
                "add eps inside the square root: sqrt(var + eps)": (bn.weight / torch.sqrt(bn.running_var), bn.bias + (b - bn.running_mean) * bn.weight / torch.sqrt(bn.running_var)),
                "divide by the standard deviation sqrt(var + eps), not the variance": (bn.weight / (bn.running_var + bn.eps), bn.bias + (b - bn.running_mean) * bn.weight / (bn.running_var + bn.eps)),
                "subtract the running mean, scaled, in the bias": (scale, bn.bias + b * scale),
                "add beta to the bias": (scale, (b - bn.running_mean) * scale),
                "the conv's own bias also passes through the batch norm: (b - mean) * scale": (scale, bn.bias - bn.running_mean * scale),
            }
            want = y * scale.view(1, -1, 1, 1) + (bn.bias + (b - bn.running_mean) * scale).view(1, -1, 1, 1)
            for what, (s_, b_) in guesses.items():
                guess = y * s_.view(1, -1, 1, 1) + b_.view(1, -1, 1, 1)
                if (not torch.allclose(guess, want, rtol=1e-5, atol=1e-5)
                        and torch.allclose(got, guess, rtol=1e-4, atol=1e-4)):
                    return what
        return ("scale each output channel's weights by gamma / sqrt(var + eps) and set the bias "
                "to beta + (b - mean) * gamma / sqrt(var + eps)")

    def without_conv_bias(fn):
        conv, bn, want, got = folded_output(fn, bias=False)
        assert _close_to_scale(got, want), hint(conv, bn, got) + _show(
            "conv without bias, bn in eval mode", want, got)

    def with_conv_bias(fn):
        conv, bn, want, got = folded_output(fn, bias=True)
        assert _close_to_scale(got, want), hint(conv, bn, got) + _show(
            "conv with bias, bn in eval mode", want, got)

    def leaves_the_originals_alone(fn):
        conv, bn = _bn_pair(True)
        before = conv.weight.detach().clone(), bn.running_mean.clone()
        _call(lambda: fn(conv, bn), "return a new conv", "conv, bn", "unchanged inputs")
        assert torch.equal(conv.weight, before[0]) and torch.equal(bn.running_mean, before[1]), (
            "the original conv or batch norm was changed in place: build a new conv"
            + _show("conv.weight", before[0], conv.weight.detach()))

    return [("a conv without bias", without_conv_bias), ("a conv with bias", with_conv_bias),
            ("the originals untouched", leaves_the_originals_alone)]


def fold_bn(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(conv, bn) -> conv``: in eval mode the folded conv computes
    ``bn(conv(x))`` to 1e-5 of the output's scale, with and without a conv bias, and leaves both
    inputs unchanged."""
    from .qmath import fold_bn as reference
    return verdict(run_cases("fold_bn", fn, _fold_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 04_low_rank: one convolution factored by channel SVD
# --------------------------------------------------------------------------------------------

def _factor_cases():
    import torch
    import torch.nn as nn

    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0, 0.25]))
    conv.eval()
    x = torch.randn(2, 3, 7, 7, generator=g)
    w = conv.weight.detach().flatten(1).double()
    s = torch.linalg.svdvals(w)

    def built(fn, rank):
        out = _call(lambda: fn(conv, rank), "return nn.Sequential(k x k conv C_in -> rank, "
                    "1x1 conv rank -> C_out)", f"conv {tuple(conv.weight.shape)}, rank {rank}",
                    "two convolutions")
        parts = list(out.children()) if isinstance(out, nn.Module) else []
        convs = [m for m in parts if isinstance(m, nn.Conv2d)]
        assert len(convs) == 2, ("return two convolutions in an nn.Sequential: first a "
                                 "k x k conv C_in -> rank, then a 1x1 conv rank -> C_out"
                                 + _show(f"rank {rank}", "Sequential(Conv2d, Conv2d)", out))
        first, second = convs
        assert (first.out_channels, second.kernel_size) == (rank, (1, 1)), (
            "the first conv keeps the k x k kernel and has `rank` output channels; the second is "
            "1x1" + _show(f"rank {rank}", f"Conv2d(3, {rank}, 3) then Conv2d({rank}, 5, 1)",
                          f"{first} then {second}"))
        return out, first, second

    def exact_at_full_rank(fn):
        out, first, _ = built(fn, 5)
        with torch.no_grad():
            want, got = conv(x), out.eval()(x)
        if first.stride != conv.stride or first.padding != conv.padding:
            raise AssertionError("the first conv takes the original stride and padding"
                                 + _show("stride 2, padding 1", "(2, 2), (1, 1)",
                                         (first.stride, first.padding)))
        assert _close_to_scale(got, want, 1e-4), (
            "at full rank the pair must compute the original conv: check the reshape of the "
            "filters (C_out x C_in*k*k) and that the bias goes on the second conv"
            + _show("rank 5 (full)", want, got))

    def error_is_the_discarded_energy(fn):
        for rank in (1, 3):
            _, first, second = built(fn, rank)
            product = second.weight.detach()[:, :, 0, 0].double() @ first.weight.detach().flatten(1).double()
            err = float(torch.linalg.norm(product - w))
            want = float(s[rank:].square().sum().sqrt())
            kept_smallest = float(s[:len(s) - rank].square().sum().sqrt())
            hint = ("keep the *largest* singular values: torch.linalg.svd returns them first"
                    if abs(err - kept_smallest) < 1e-3 * kept_smallest else
                    "the product of the two weights must be the best rank-r approximation: "
                    "U[:, :r] S[:r] and Vh[:r], split between the two convs")
            assert abs(err - want) <= 1e-4 * float(s[0]), hint + _show(
                f"rank {rank}", f"||W - W_r|| = {want:.5f} (sqrt of the discarded s^2)", f"{err:.5f}")

    def leaves_the_conv_alone(fn):
        before = conv.weight.detach().clone()
        built(fn, 2)
        assert torch.equal(conv.weight, before), ("the original conv was changed in place"
                                                  + _show("conv.weight", before, conv.weight.detach()))

    return [("full rank is exact", exact_at_full_rank),
            ("the error at lower rank", error_is_the_discarded_energy),
            ("the original untouched", leaves_the_conv_alone)]


def factor_conv(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(conv, rank) -> nn.Sequential(k x k conv C_in -> rank, 1x1 conv
    rank -> C_out)``: exact at full rank; at lower rank the weight error (Frobenius) equals the
    discarded singular values' energy, sqrt(sum of s_i^2 for i > rank)."""
    import torch.nn as nn

    from . import lowrank

    def reference(conv: nn.Conv2d, rank: int) -> nn.Module:
        return lowrank.factor(conv, rank)
    return verdict(run_cases("factor_conv", fn, _factor_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 02_quantization: fake quantization with the straight-through estimator
# --------------------------------------------------------------------------------------------

def _ste_cases():
    import torch

    def against_torch(fn, x, scale, zp, qmin, qmax):
        ref_x = x.clone().requires_grad_(True)
        want = torch.fake_quantize_per_tensor_affine(ref_x, scale, zp, qmin, qmax)
        want.sum().backward()
        mine = x.clone().requires_grad_(True)
        label = f"x = {_fmt(x)}, scale {scale}, zero point {zp}, codes {qmin}..{qmax}"
        got = _call(lambda: fn(mine, scale, zp, qmin, qmax), "round in the forward pass, pass "
                    "the gradient straight through inside the range", label, want)
        assert isinstance(got, torch.Tensor) and got.shape == x.shape, (
            "return a tensor shaped like x" + _show(label, want.detach(), got))
        assert torch.allclose(got.detach(), want.detach(), atol=1e-6), (
            "the forward values: clamp(round(x / scale) + zero_point, qmin, qmax), then back to "
            "(q - zero_point) * scale" + _show(label, want.detach(), got.detach()))
        assert got.requires_grad, ("no gradient reaches x: torch.round has a zero derivative; "
                                   "write x + (q - x).detach() or an autograd.Function"
                                   + _show(label, ref_x.grad, "no grad_fn"))
        got.sum().backward()
        g = mine.grad if mine.grad is not None else torch.zeros_like(x)
        if not torch.allclose(g, ref_x.grad):
            if torch.all(g == 0):
                hint = ("no gradient reaches x: torch.round has a zero derivative; pass it "
                        "straight through (x + (q - x).detach())")
            elif torch.all(g == 1):
                hint = ("the gradient must be zero where x was clipped to the range: clamp x to "
                        "[(qmin - zp) * scale, (qmax - zp) * scale] before the straight-through trick")
            else:
                hint = "the gradient is 1 inside the range and 0 where x was clipped"
            raise AssertionError(hint + _show(label, ref_x.grad, g))

    def symmetric(fn):
        against_torch(fn, torch.tensor([-1.5, -1.3, -0.9, -0.5, -0.1, 0.0, 0.3, 0.6, 0.7, 1.0, 1.5]),
                      0.25, 0, -4, 3)

    def with_a_zero_point(fn):
        against_torch(fn, torch.tensor([-0.9, -0.3, 0.0, 0.2, 0.26, 0.74, 1.6, 3.0]), 0.1, 5, 0, 15)

    def ties_and_clips_on_both_sides(fn):
        against_torch(fn, torch.tensor([-2.0, -0.375, -0.125, 0.125, 0.375, 0.6, 2.0]), 0.25, 1, -2, 4)

    # No x lies within half a step outside the range, where "clipped" depends on whether x or
    # its rounded code is compared with the range (torch compares the code; clamping x first,
    # the usual hand-written form, compares x): both conventions pass.
    return [("symmetric codes", symmetric), ("a zero point", with_a_zero_point),
            ("ties and clipping", ties_and_clips_on_both_sides)]


def fake_quant_ste(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(x, scale, zero_point, qmin, qmax)``: forward values and the
    gradient with respect to x, inside and outside the clip range, against
    ``torch.fake_quantize_per_tensor_affine``."""
    from .qmath import fake_quant_ste as reference
    return verdict(run_cases("fake_quant_ste", fn, _ste_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 01_pruning: when do zeros pay? The bytes of a sparse (CSR) weight
# --------------------------------------------------------------------------------------------

def _csr_actual(w2d, index_dtype):
    """What torch's CSR tensor holds, in bytes, with int64 or int32 indices."""
    import warnings

    import torch
    with warnings.catch_warnings():   # "sparse CSR support is in beta": not the learner's business
        warnings.simplefilter("ignore")
        csr = w2d.to_sparse_csr()
        crow, col, val = csr.crow_indices(), csr.col_indices(), csr.values()
        if index_dtype == torch.int32:
            csr = torch.sparse_csr_tensor(crow.int(), col.int(), val, size=w2d.shape)
            crow, col = csr.crow_indices(), csr.col_indices()
    return sum(t.numel() * t.element_size() for t in (crow, col, csr.values()))


def _csr_cases():
    import torch

    def weight(sparsity, seed=0):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(6, 3, 3, 3, generator=g)
        k = round(sparsity * w.numel())
        w.view(-1)[torch.randperm(w.numel(), generator=g)[:k]] = 0
        return w

    def compare(fn, sparsity, index_bytes):
        w = weight(sparsity)
        dtype = torch.int64 if index_bytes == 8 else torch.int32
        want = _csr_actual(w.reshape(6, -1), dtype)
        nnz = int((w != 0).sum())
        label = f"a (6, 3, 3, 3) conv weight, {nnz} of {w.numel()} non-zero, {index_bytes}-byte indices"
        got = _call(lambda: fn(w.clone(), index_bytes), "count values, column indices and row "
                    "pointers", label, want)
        if got == want:
            return
        rows = 6
        guesses = {
            nnz * (4 + index_bytes): "add the row pointers: rows + 1 of them, one index each",
            nnz * (4 + index_bytes) + rows * index_bytes: "there are rows + 1 row pointers "
                                                          "(each row's start, and the end)",
            nnz * 4 + (rows + 1) * index_bytes: "each non-zero also stores its column index",
            w.numel() * (4 + index_bytes) + (rows + 1) * index_bytes: "count the non-zero values "
                                                                      "only: zeros are not stored",
            nnz * 12 + (rows + 1) * 8: "use index_bytes for the indices (int32: 4 bytes)",
        }
        raise AssertionError(guesses.get(got, "values (4 bytes each) + one column index per value "
                                              "+ (rows + 1) row pointers") + _show(label, want, got))

    return [("50 % sparse, int64", lambda fn: compare(fn, 0.5, 8)),
            ("90 % sparse, int64", lambda fn: compare(fn, 0.9, 8)),
            ("90 % sparse, int32", lambda fn: compare(fn, 0.9, 4)),
            ("all zero", lambda fn: compare(fn, 1.0, 8))]


def csr_bytes(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(weight, index_bytes) -> int``: the bytes of the weight, reshaped
    to (out, in*k*k), as a CSR matrix with float32 values, against torch's own CSR tensor."""
    from .prune import csr_bytes as reference
    return verdict(run_cases("csr_bytes", fn, _csr_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 02_quantization: an int8 linear layer in integers only
# --------------------------------------------------------------------------------------------

def _int_linear_cases():
    import torch

    g = torch.Generator().manual_seed(3)
    x_q = torch.randint(0, 256, (5, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    w_q = torch.randint(-127, 128, (4, 16), generator=g, dtype=torch.int32).to(torch.int8)
    bias_q = torch.tensor([900, -4000, 0, 12345], dtype=torch.int32)

    def float_ref(x_zp, m, y_zp, bias=True, xzp=True, yzp=True, clamp=True):
        acc = (x_q.double() - (x_zp if xzp else 0)) @ w_q.double().T + (bias_q.double() if bias else 0)
        y = torch.round(acc * torch.as_tensor(m, dtype=torch.float64)) + (y_zp if yzp else 0)
        return y.clamp(0, 255) if clamp else y

    def compare(fn, x_zp, m, y_zp):
        m = torch.as_tensor(m, dtype=torch.float64)
        want = float_ref(x_zp, m, y_zp)
        label = (f"x_q {tuple(x_q.shape)} uint8 (zero point {x_zp}), w_q {tuple(w_q.shape)} int8, "
                 f"bias_q {_fmt(bias_q)}, M {_fmt(m)}, y zero point {y_zp}")
        got = _call(lambda: fn(x_q.clone(), x_zp, w_q.clone(), bias_q.clone(), m.clone(), y_zp),
                    "accumulate (x_q - x_zp) @ w_q.T + bias_q in integers, then requantize", label, want)
        assert isinstance(got, torch.Tensor) and not got.is_floating_point(), (
            "return integer codes (uint8), not floats: the point is that no float is involved"
            + _show(label, want, got))
        diff = (got.double() - want).abs()
        if float(diff.max()) <= 1:
            return
        for kw, hint in (({"xzp": False}, "subtract the input's zero point before multiplying"),
                         ({"yzp": False}, "add the output's zero point after requantizing"),
                         ({"bias": False}, "add the int32 bias to the accumulator"),
                         ({"clamp": False}, "clamp to the uint8 codes 0..255 before converting")):
            guess = float_ref(x_zp, m, y_zp, **kw)
            if "clamp" in kw:   # unclamped codes wrap around when cast to uint8
                guess = torch.remainder(guess, 256)
            if float((got.double() - guess).abs().max()) <= 1:
                raise AssertionError(hint + _show(label, want, got))
        raise AssertionError("more than one code off: requantize as round(acc * M) with M as a "
                             "fixed-point multiplier m0 and a shift" + _show(label, want, got))

    return [("one multiplier, both zero points", lambda fn: compare(fn, 128, 0.0021, 17)),
            ("one multiplier per output", lambda fn: compare(fn, 100, [0.0012, 0.004, 0.0007, 0.0025], 60)),
            ("outputs that must clamp", lambda fn: compare(fn, 3, 0.02, 128))]


def int_linear(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(x_q, x_zp, w_q, bias_q, m, y_zp) -> uint8 codes``: within one
    output code of ``round(((x_q - x_zp) @ w_q.T + bias_q) * m) + y_zp``, clamped to 0..255, on
    fixed cases with non-zero zero points, one or one multiplier per output."""
    from .qmath import int_linear as reference
    return verdict(run_cases("int_linear", fn, _int_linear_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 02_quantization: k-means weight sharing (Deep Compression)
# --------------------------------------------------------------------------------------------

def _kmeans_cases():
    import torch

    from .qmath import kmeans_quantize as reference

    def tensor(seed):
        g = torch.Generator().manual_seed(seed)
        # three clumps and a few outliers, like a layer's weights
        return torch.cat([0.05 * torch.randn(40, generator=g) - 0.3, 0.02 * torch.randn(60, generator=g),
                          0.05 * torch.randn(30, generator=g) + 0.25, torch.tensor([0.9, -0.8])]
                         ).reshape(2, 66)

    def run(fn, w, bits):
        label = f"a (2, 66) tensor in three clumps and two outliers, {bits} bits"
        got = _call(lambda: fn(w.clone(), bits), "return (centroids, indices, reconstruction)",
                    label, f"{2 ** bits} centroids")
        assert isinstance(got, tuple) and len(got) == 3, (
            "return three things: the centroids, each weight's centroid index, the reconstruction"
            + _show(label, "(centroids, indices, reconstruction)", type(got).__name__))
        return label, got

    def shapes_and_codebook(fn):
        w = tensor(0)
        label, (c, idx, r) = run(fn, w, 2)
        assert r.shape == w.shape and idx.shape == w.shape, (
            "indices and reconstruction have the weight's shape" + _show(label, tuple(w.shape), tuple(r.shape)))
        assert c.numel() <= 4 and torch.unique(r).numel() <= 4, (
            "2 bits allow 4 shared values" + _show(label, "at most 4 values", torch.unique(r)))
        assert torch.allclose(r, c.flatten()[idx.long()]), (
            "the reconstruction is centroids[indices]" + _show(label, c.flatten()[idx.long()], r))

    def lloyd_fixed_point(fn):
        w = tensor(1)
        label, (c, idx, r) = run(fn, w, 3)
        assert torch.isfinite(r).all(), ("NaN or Inf: an empty cluster divided by zero; keep its "
                                         "centroid where it was" + _show(label, "finite values", r))
        c = c.flatten()
        nearest = (w.flatten()[:, None] - c[None]).abs().min(1).values
        assert torch.allclose((w.flatten() - r.flatten()).abs(), nearest, atol=1e-6), (
            "each weight goes to its *nearest* centroid" + _show(label, nearest, (w - r).abs()))
        for j in idx.unique():
            members = w.flatten()[idx.flatten() == j]
            assert abs(float(members.mean() - c[j])) < 1e-5, (
                "iterate until each centroid is the mean of its weights (Lloyd's algorithm)"
                + _show(label, f"centroid {int(j)} = {float(members.mean()):.5f} (its members' mean)",
                        float(c[j])))

    def linear_initialisation(fn):
        w = tensor(2)
        label, (_, _, r) = run(fn, w, 2)
        want = reference(w, 2)[2]
        assert torch.allclose(r, want, atol=1e-5), (
            "start from centroids spread linearly over [min, max] (torch.linspace): k-means "
            "finds different clusters from different starts" + _show(label, want, r))

    return [("shapes and codebook", shapes_and_codebook), ("Lloyd's fixed point", lloyd_fixed_point),
            ("the linear start", linear_initialisation)]


def kmeans_quantize(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(w, bits) -> (centroids, indices, reconstruction)``: at most
    2^bits shared values, each weight at its nearest centroid, each centroid its members' mean,
    from the linear initialisation over [min, max]."""
    from .qmath import kmeans_quantize as reference
    return verdict(run_cases("kmeans_quantize", fn, _kmeans_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 01_pruning: removing channels by hand
# --------------------------------------------------------------------------------------------

def _pair(seed: int = 0):
    """conv (3 -> 6, 3x3) -> bn -> ReLU -> next conv (6 -> 4, 3x3), eval mode. The filters'
    L2 and L1 rankings differ, and every batch norm has a positive beta - gamma * mean / std, so
    a removed channel does *not* output zero after the batch norm."""
    import torch
    import torch.nn as nn

    g = torch.Generator().manual_seed(seed)
    conv, bn, nxt = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3, padding=1)
    with torch.no_grad():
        base = torch.randn(6, 27, generator=g)
        base[0] = torch.tensor([1.9] + [0.0] * 26)       # one large weight: big L2, small L1
        base[1] = torch.full((27,), 0.3)                 # many mid weights: big L1, small L2
        conv.weight.copy_(base.view(6, 3, 3, 3) * torch.tensor([1, 1, 0.2, 0.5, 0.1, 0.8]).view(6, 1, 1, 1))
        bn.running_mean.copy_(torch.linspace(-0.5, 0.5, 6))
        bn.running_var.copy_(torch.linspace(0.5, 2.0, 6))
        bn.weight.copy_(torch.linspace(0.5, 1.5, 6))
        bn.bias.copy_(torch.linspace(0.5, 1.2, 6))
        nxt.weight.copy_(torch.randn(nxt.weight.shape, generator=g))
    return conv.eval(), bn.eval(), nxt.eval()


def _prune_pair_cases():
    import torch

    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(9))

    def masked_original(conv, bn, nxt, keep_idx):
        with torch.no_grad():
            h = torch.relu(bn(conv(x)))
            mask = torch.zeros(conv.out_channels)
            mask[keep_idx] = 1
            return nxt(h * mask.view(1, -1, 1, 1))

    def case(fn, rate):
        conv, bn, nxt = _pair()
        keep = round((1 - rate) * 6)
        l2 = conv.weight.detach().flatten(1).norm(dim=1)
        want = masked_original(conv, bn, nxt, l2.topk(keep).indices)
        label = f"conv 3->6, bn, ReLU, next conv 6->4; rate {rate} (keep {keep} of 6)"
        got = _call(lambda: fn(conv, bn, nxt, rate), "return (thinner conv, sliced bn, next conv "
                    "with fewer input channels)", label, want)
        assert isinstance(got, tuple) and len(got) == 3, (
            "return three modules: (conv, bn, next_conv)" + _show(label, "(conv, bn, next)", got))
        c2, b2, n2 = got
        assert c2.out_channels == keep and b2.num_features == keep and n2.in_channels == keep, (
            f"keep round((1 - rate) * C) = {keep} channels in all three" + _show(
                label, f"{keep}, {keep}, {keep}", f"{c2.out_channels}, {b2.num_features}, {n2.in_channels}"))
        with torch.no_grad():
            out = n2.eval()(torch.relu(b2.eval()(c2.eval()(x))))
        if torch.allclose(out, want, atol=1e-5):
            return
        l1 = conv.weight.detach().flatten(1).abs().sum(1)
        for idx, hint in ((l1.topk(keep).indices, "rank the filters by their L2 norm, not L1"),
                          (l2.topk(keep, largest=False).indices, "keep the *largest* filters"),
                          (torch.arange(keep), "choose channels by their filters' norm, not by position")):
            if torch.allclose(out, masked_original(conv, bn, nxt, idx), atol=1e-5):
                raise AssertionError(hint + _show(label, want, out))
        raise AssertionError(
            "the pruned block must equal the original with the removed channels' post-ReLU "
            "activations set to zero: slice the batch norm's weight, bias, running_mean and "
            "running_var with the same indices as the filters, and next_conv's *input* "
            "channels (weight[:, idx])" + _show(label, want, out))

    def leaves_the_originals_alone(fn):
        conv, bn, nxt = _pair()
        before = [t.detach().clone() for t in (conv.weight, bn.running_var, nxt.weight)]
        _call(lambda: fn(conv, bn, nxt, 0.5), "return new modules", "rate 0.5", "new modules")
        after = (conv.weight, bn.running_var, nxt.weight)
        assert all(torch.equal(a.detach(), b) for a, b in zip(after, before)), (
            "the original modules were changed: build new ones" + _show("rate 0.5", before[0], conv.weight.detach()))

    return [("half the channels", lambda fn: case(fn, 0.5)),
            ("a third of them", lambda fn: case(fn, 1 / 3)),
            ("the originals untouched", leaves_the_originals_alone)]


def prune_pair(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(conv, bn, next_conv, rate) -> (conv, bn, next_conv)``: the thin
    block computes what the original computes with the removed channels' post-ReLU activations
    zeroed (a removed filter does not output zero after the batch norm: beta - gamma*mean/std can
    pass the ReLU), channels ranked by their filters' L2 norm."""
    from .prune import prune_pair as reference
    return verdict(run_cases("prune_pair", fn, _prune_pair_cases()), fn, reference, quiet)
