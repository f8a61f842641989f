"""Checkers for the distillation loss (03), the Pi's preprocessing (05) and the choice of the
model to ship (06)."""
from __future__ import annotations

import math

from .check import Exercise, _call, _fmt, _show, register

__all__ = ["kd_loss", "preprocess", "choose_model"]

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


kd_loss = register(Exercise(
    "kd_loss", notebook="03_distillation",
    signature="fn(student_logits, teacher_logits, labels, T, alpha)",
    checks="alpha * T^2 * KL(p_teacher || p_student) at temperature T plus (1 - alpha) times "
    "the cross-entropy with the labels, and its gradient; the teacher gets none.\n\n"
    "The soft term may be written as KL(p_teacher || p_student) or as the soft cross-entropy "
    "-sum(p_teacher * log p_student): they differ by the teacher's entropy, a constant for the "
    "student, so their values differ by alpha * T^2 * H(p_teacher) and their gradients with "
    "respect to the student's logits are equal. The checker accepts either value and compares "
    "that gradient.",
    hint="F.kl_div(log_softmax(s / T), softmax(t.detach() / T), reduction='batchmean') * T * T "
    "* alpha + (1 - alpha) * F.cross_entropy(s, labels)", minutes=15,
    reference="edgelab.distill.kd_loss", cases=_kd_cases))
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


def _preprocess_reference(pixels, mean, std):
    """The answer to 05's exercise, as the bundle's predict.py computes it."""
    import numpy as np
    x = pixels.astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(mean)) / np.float32(std))[:, None]


preprocess = register(Exercise(
    "preprocess", notebook="05_deploy_pi", signature="fn(pixels, mean, std)",
    checks="uint8 (N, H, W) -> float32 (N, 1, H, W), ``(pixels / 255 - mean) / std``, as the "
    "bundle's predict.py does after reading a file.",
    hint="(pixels / 255 - mean) / std with the training set's constants, as float32, with a "
    "channel axis second: x[:, None]", minutes=10,
    reference="edgelab.check_pipeline._preprocess_reference", cases=_preprocess_cases))
# --------------------------------------------------------------------------------------------
# 06_pipeline: choosing the model to ship
# --------------------------------------------------------------------------------------------

def _record(name, val, test, size, ms):
    return {"name": name, "val_accuracy": val, "accuracy": test, "bytes": size,
            "latency_b1_ms": ms}


def _choose_cases():
    from .targets import BARS

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


choose_model = register(Exercise(
    "choose_model", notebook="06_pipeline",
    signature="fn(records, teacher, bar) -> (record | None, why)",
    checks="the model to ship is chosen on validation (``targets.meets(r, teacher, bar, "
    "\"val\")``), most accurate there, the faster of a tie; None when nothing meets the bar.",
    hint="keep the records with targets.meets(r, teacher, bar, 'val'); the highest "
    "val_accuracy, the lower latency_b1_ms of a tie; (None, why) when none is left",
    minutes=10, reference="edgelab.targets.choose", cases=_choose_cases))
