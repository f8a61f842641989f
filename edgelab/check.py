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


# --------------------------------------------------------------------------------------------
# 02_quantization: quantize, then dequantize (fake quantization), asymmetric, per tensor or axis
# --------------------------------------------------------------------------------------------

def _qdq_cases():
    import torch

    def close(a, b, tol=1e-6):
        return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol, rtol=0))

    def returns_floats_of_the_same_shape(fn):
        x = torch.linspace(-1.0, 2.0, 12).reshape(3, 4)
        out = fn(x.clone(), 8)
        assert isinstance(out, torch.Tensor), f"returned {type(out).__name__}, not a tensor"
        assert out.shape == x.shape, f"shape {tuple(out.shape)}, expected {tuple(x.shape)}"
        assert out.is_floating_point(), (f"returned {out.dtype}: dequantize back to floats "
                                         "((q - zero_point) * scale)")

    def leaves_the_input_alone(fn):
        x = torch.tensor([-0.7, 0.1, 0.45, 1.3])
        before = x.clone()
        fn(x, 4)
        assert torch.equal(x, before), "the input tensor was modified in place"

    def zero_is_exact(fn):
        # range [-0.37, 1.0]: -min/scale = 4.05 is not an integer. The zero point must be
        # rounded to one (4), else 0.0 falls between two levels or the levels drift off the
        # grid of whole steps from 0.
        x = torch.tensor([-0.37, 0.0, 0.2, 0.0, 1.0])
        out = fn(x, 4)
        assert out[1] == 0 and out[3] == 0, (
            f"0.0 came back as {out[1].item():.4g}: round the zero point to an integer, so that "
            "0.0 is exactly one of the levels")
        steps = out / (1.37 / 15)
        off = (steps - steps.round()).abs().max().item()
        assert off < 1e-3, (
            f"a value came back {off:.2f} of a step off the grid of whole steps from 0.0: round "
            "the zero point to an integer before using it, so that every code is an integer")

    def rounds_to_nearest(fn):
        x = torch.linspace(-1.0, 1.2, 101)
        out = fn(x, 4)
        scale = 2.2 / 15
        err = (out - x).abs().max().item()
        assert err <= scale / 2 * (1 + 1e-4), (
            f"an error of {err:.3f} where at most half a step ({scale / 2:.3f}) is possible: "
            "round to the nearest level (torch.round), not floor or truncate, and spread the "
            "range over 2**bits - 1 steps")

    def uses_all_levels_and_no_more(fn):
        x = torch.linspace(-1.0, 3.0, 1000)
        for bits in (2, 3, 8):
            levels = fn(x, bits).unique().numel()
            assert levels <= 2 ** bits, (
                f"{levels} distinct values at {bits} bits, more than 2**{bits} = {2 ** bits}: "
                "clamp the integers to [0, 2**bits - 1]")
            assert levels >= 2 ** bits - 1, (
                f"only {levels} distinct values at {bits} bits: the scale should spread the "
                "range over all 2**bits - 1 steps, scale = (max - min) / (2**bits - 1)")

    def clamps_to_the_top_code(fn):
        # scale 1, zero point round(1.5) = 2: the top value 1.5 rounds to 2, plus 2 = code 4,
        # one past the top code 3 of 2 bits. Only the clamp keeps it at 3, i.e. 1.0.
        x = torch.tensor([-1.5, 0.0, 1.45, 1.5])
        out = fn(x, 2)
        top = out.max().item()
        assert abs(top - 1.0) < 1e-5, (
            f"the largest value came back as {top:.4g}, expected 1.0: after rounding and adding "
            "the zero point, clamp the codes to [0, 2**bits - 1] (here the top value lands on "
            "code 4 of a 2-bit range 0..3)")

    def constant_zero_tensor(fn):
        x = torch.zeros(3, 3)
        out = fn(x, 8)
        assert torch.isfinite(out).all(), ("an all-zero tensor (a pruned filter) gave "
                                           "NaN or inf: guard against a scale of 0")
        assert torch.equal(out, x), "an all-zero tensor should come back as zeros"

    def per_channel_axis_0(fn):
        # a conv weight (out, in, k, k): one filter 1000x smaller than the other
        w = torch.stack([torch.linspace(-1.0, 1.0, 18).reshape(2, 3, 3),
                         torch.linspace(-1e-3, 2e-3, 18).reshape(2, 3, 3)])
        out = fn(w, 4, axis=0)
        assert out.shape == w.shape, f"shape {tuple(out.shape)}, expected {tuple(w.shape)}"
        small_err = (out[1] - w[1]).abs().max().item()
        step = 3e-3 / 15
        assert small_err <= step / 2 + 1e-7, (
            f"with axis=0 the small filter's error is {small_err:.2e}, more than half its own "
            f"step ({step / 2:.1e}): each slice along `axis` needs its own min, max, scale and "
            "zero point (reduce over every other dimension, keepdim=True)")

    def per_channel_axis_1(fn):
        x = torch.tensor([[0.0, -10.0, 0.001], [1.0, 9.0, -0.002], [0.5, 0.0, 0.0]])
        out = fn(x, 6, axis=1)
        assert out.shape == x.shape, f"shape {tuple(out.shape)}, expected {tuple(x.shape)}"
        for col, rng in ((0, 1.0), (1, 19.0), (2, 0.003)):
            err = (out[:, col] - x[:, col]).abs().max().item()
            assert err <= rng / 63 / 2 * (1 + 1e-4), (
                f"with axis=1, column {col} is off by {err:.3g}: the scales must be per column "
                "here (axis=1), not per row or per tensor")

    def per_tensor_by_default(fn):
        x = torch.tensor([[-1.0, 0.0, 1.2], [0.01, 0.02, 0.03]])
        out = fn(x, 4)
        assert torch.equal(out[1], torch.zeros(3)), (
            "with axis=None one scale covers the whole tensor, so the small second row "
            f"(0.01..0.03) rounds to 0, but it came back as {out[1].tolist()}")

    return [
        ("returns floats of the same shape", returns_floats_of_the_same_shape),
        ("leaves the input alone", leaves_the_input_alone),
        ("0.0 is exactly representable", zero_is_exact),
        ("rounds to the nearest level", rounds_to_nearest),
        ("2**bits levels, no more", uses_all_levels_and_no_more),
        ("codes clamped to [0, 2**bits - 1]", clamps_to_the_top_code),
        ("an all-zero tensor", constant_zero_tensor),
        ("one scale per tensor by default", per_tensor_by_default),
        ("per channel along axis 0 (conv filters)", per_channel_axis_0),
        ("per channel along axis 1", per_channel_axis_1),
    ]


def quantize_dequantize(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(x, bits, axis=None)``: asymmetric fake quantization (quantize to
    ``bits``-bit unsigned codes, then dequantize), per tensor or per slice along ``axis``."""
    from . import quantize

    def reference(x, bits, axis=None):
        return quantize.quantize_dequantize(x, bits, axis=axis, symmetric=False)

    return verdict(run_cases("quantize_dequantize", fn, _qdq_cases()), fn, reference, quiet)


# --------------------------------------------------------------------------------------------
# 03_distillation: the knowledge-distillation loss
# --------------------------------------------------------------------------------------------

def _kd_cases():
    import torch
    import torch.nn.functional as F

    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.5, 0.3]])
    t = torch.tensor([[4.0, 1.0, -2.0], [-1.0, 3.0, 2.0]])
    y = torch.tensor([0, 2])

    def kl(T):
        p = F.softmax(t / T, 1)
        return (p * (p.log() - F.log_softmax(s / T, 1))).sum(1).mean().item()

    def value(fn, T, alpha, s=s, t=t, y=y):
        out = fn(s, t, y, T, alpha)
        assert isinstance(out, torch.Tensor) and out.dim() == 0, \
            f"return one number as a 0-dim tensor (got {getattr(out, 'shape', type(out))})"
        return out.item()

    def t1_is_plain_kl(fn):
        got, want = value(fn, 1.0, 1.0), kl(1.0)
        reverse = (F.softmax(s, 1) * (F.log_softmax(s, 1) - F.log_softmax(t, 1))).sum(1).mean().item()
        assert abs(got - want) < 1e-5, (
            f"T = 1, alpha = 1 should give KL(teacher || student) of the plain softmaxes = "
            f"{want:.5f}, got {got:.5f}"
            + (" — that is KL(student || teacher): F.kl_div(input, target) wants the student's "
               "log-probabilities as input and the teacher's probabilities as target"
               if abs(got - reverse) < 1e-5 else "")
            + (" — average over the batch (reduction='batchmean'), not over every element"
               if abs(got - want / 3) < 1e-5 else ""))

    def t_squared(fn):
        got, want = value(fn, 4.0, 1.0), 16 * kl(4.0)
        assert abs(got - want) < 1e-4, (
            f"T = 4, alpha = 1 should give T^2 * KL at T = 4 = {want:.5f}, got {got:.5f}"
            + (" — multiply the soft term by T^2: softening shrinks its gradients by 1/T^2"
               if abs(got - kl(4.0)) < 1e-5 else "")
            + (" — divide the logits by T before the softmax (both student and teacher)"
               if abs(got - 16 * kl(1.0)) < 1e-4 else ""))

    def alpha_zero_is_cross_entropy(fn):
        got, want = value(fn, 4.0, 0.0), F.cross_entropy(s, y).item()
        assert abs(got - want) < 1e-5, (
            f"alpha = 0 should be the plain cross-entropy with the labels ({want:.5f}), got "
            f"{got:.5f}" + (" — the hard term uses the student's logits without T"
                            if abs(got - F.cross_entropy(s / 4, y).item()) < 1e-5 else ""))

    def alpha_mixes(fn):
        got = value(fn, 2.0, 0.25)
        want = 0.25 * 4 * kl(2.0) + 0.75 * F.cross_entropy(s, y).item()
        assert abs(got - want) < 1e-4, (
            f"alpha = 0.25, T = 2: 0.25 * T^2 * KL + 0.75 * CE = {want:.5f}, got {got:.5f}"
            " — alpha weighs the teacher's soft term, 1 - alpha the labels")

    def teacher_gets_no_gradient(fn):
        tt = t.clone().requires_grad_(True)
        ss = s.clone().requires_grad_(True)
        fn(ss, tt, y, 4.0, 0.9).backward()
        assert tt.grad is None or not tt.grad.abs().sum() > 0, \
            "the loss sends gradients into the teacher's logits: .detach() them (the teacher is frozen)"
        assert ss.grad is not None and ss.grad.abs().sum() > 0, "the student's logits get no gradient"

    return [("T = 1 equals KL of the plain softmaxes", t1_is_plain_kl),
            ("the soft term is scaled by T^2", t_squared),
            ("alpha = 0 gives pure cross-entropy", alpha_zero_is_cross_entropy),
            ("alpha mixes the two terms", alpha_mixes),
            ("the teacher gets no gradient", teacher_gets_no_gradient)]


def kd_loss(fn: Callable, quiet: bool = False) -> Callable:
    """Check the learner's ``fn(student_logits, teacher_logits, labels, T, alpha)``."""
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

    def returns_float32_nchw(fn):
        x = fn(pixels.copy(), mean, std)
        assert isinstance(x, np.ndarray), (
            f"return a NumPy array (got {type(x).__name__}): ONNX Runtime is fed NumPy")
        assert x.dtype == np.float32, (
            f"return float32 (got {x.dtype}): the model's input is tensor(float), and ONNX "
            "Runtime refuses float64 with 'Unexpected input data type'; use .astype(np.float32)")
        assert x.shape == (1, 1, 2, 2), (
            f"(N, H, W) = (1, 2, 2) pixels must become (N, 1, H, W) = (1, 1, 2, 2), got "
            f"{x.shape}: add the channel axis, e.g. x[:, None]")

    def values(fn):
        x = np.asarray(fn(pixels.copy(), mean, std), dtype=np.float64).reshape(want.shape)
        if np.allclose(x, want, atol=1e-6):
            return
        raw = pixels[:, None].astype(np.float64)
        hints = [(raw, "these are the raw pixels"),
                 ((raw - mean) / std, "divide by 255 first: the mean and std are for pixels in [0, 1]"),
                 (raw / 255, "then subtract the mean and divide by the std (labels.json has both)"),
                 ((raw / 255 - mean) * std, "divide by the std, do not multiply"),
                 (raw / 255 - mean, "divide by the std as well"),
                 ((raw / 255) / std - mean, "subtract the mean before dividing by the std")]
        hint = next((h for v, h in hints if np.allclose(x, v, atol=1e-6)), "")
        assert False, (f"pixels [0, 255, 51, 102] with mean {mean} and std {std} should give "
                       f"{_fmt(want)}, got {_fmt(x)}" + (f" — {hint}" if hint else ""))

    def constants_not_per_image(fn):
        white = np.full((2, 2, 2), 255, dtype=np.uint8)
        white[1] = 51
        x = np.asarray(fn(white, mean, std), dtype=np.float64)
        assert np.isfinite(x).all() and np.allclose(x[0], 2.0) and np.allclose(x[1], 0.0), (
            "an all-white image must give (1 - 0.2) / 0.4 = 2.0 everywhere, and an all-0.2 one 0.0; "
            f"got {_fmt(x[0])} and {_fmt(x[1])}: use the training set's mean and std (the "
            "arguments), never statistics of the image itself")

    def leaves_input_alone(fn):
        p = pixels.copy()
        fn(p, mean, std)
        assert np.array_equal(p, pixels), "do not change the caller's pixels in place"

    def any_batch(fn):
        rng = np.random.default_rng(0)
        p = rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8)
        x = fn(p, 0.2860, 0.3530)
        ref = (p[:, None].astype(np.float64) / 255 - 0.2860) / 0.3530
        assert np.shape(x) == (3, 1, 5, 4), f"3 images of 5x4 should give (3, 1, 5, 4), got {np.shape(x)}"
        assert np.allclose(x, ref, atol=1e-5), "a batch of 3 random images is off: each image on its own"

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
