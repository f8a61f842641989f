"""The exercise checkers (edgelab.check) cannot be fooled: each typical wrong answer is rejected
with a hint that names its mistake and a printout of the failing case, and each right answer,
in any equivalent form, is accepted."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgelab import check, distill, lowrank, prune, qmath, targets


def judge(checker, fn, capsys):
    """(whether ``checker`` let ``fn`` through, what it printed)."""
    capsys.readouterr()
    accepted = checker(fn) is fn
    return accepted, capsys.readouterr().out


def assert_rejected_with(checker, fn, hint, capsys):
    accepted, out = judge(checker, fn, capsys)
    assert not accepted, f"{fn.__name__} was accepted:\n{out}"
    assert "checks failed" in out and hint in out, f"{fn.__name__}: no {hint!r} in\n{out}"
    # the failing case is printed: what went in, what should come out, what did
    assert all(f"\n      {row}:" in out for row in ("input", "expected", "got")), out


def assert_accepted(checker, fn, capsys):
    accepted, out = judge(checker, fn, capsys)
    assert accepted and "checks passed" in out, f"{fn.__name__} was rejected:\n{out}"


def test_every_checker_and_the_runner_are_public():
    assert set(check.__all__) >= {"magnitude_mask", "magnitude_threshold", "quantize_dequantize",
                                  "kd_loss", "preprocess", "Outcome", "run_cases", "verdict"}
    assert all(callable(getattr(check, name)) for name in check.__all__ if name != "EXERCISES")
    assert set(check.EXERCISES) <= set(check.__all__)   # the registry the checkers come from


def test_a_rejected_answer_falls_back_to_the_reference_and_quiet_prints_nothing(capsys):
    def signed(w, rate):
        return w > w.median()
    assert check.magnitude_mask(signed, quiet=True) is prune.magnitude_mask
    assert capsys.readouterr().out == ""


# -- magnitude_mask --------------------------------------------------------------------------

def _mask_keeping(scores, keep_count):
    def mask(w, rate):
        n = w.numel()
        m = torch.zeros(n, dtype=torch.bool)
        keep = keep_count(n, rate)
        if keep:
            m[scores(w).flatten().topk(keep).indices] = True
        return m.view_as(w)
    return mask


def _mask_compares_with_threshold(w, rate):
    return w.abs() > prune.magnitude_threshold(w, rate)


_mask_signed = _mask_keeping(lambda w: w, lambda n, r: n - round(r * n))
_mask_keeps_the_rate = _mask_keeping(lambda w: w.abs(), lambda n, r: round(r * n) if r else n)
_mask_truncates = _mask_keeping(lambda w: w.abs(), lambda n, r: n - int(r * n))
_mask_rounds_up = _mask_keeping(lambda w: w.abs(), lambda n, r: n - math.ceil(r * n))
_mask_rounds_halves_up = _mask_keeping(lambda w: w.abs(), lambda n, r: n - math.floor(r * n + 0.5))
_mask_keeps_the_smallest = _mask_keeping(lambda w: -w.abs(), lambda n, r: n - round(r * n))


def _mask_flat(w, rate):
    return prune.magnitude_mask(w, rate).flatten()


def _mask_of_floats(w, rate):
    return prune.magnitude_mask(w, rate).float()


def _mask_ranks_each_row(w, rate):
    n = w.shape[-1]
    keep = n - round(rate * n)
    idx = w.abs().topk(keep, dim=-1).indices
    return torch.zeros_like(w, dtype=torch.bool).scatter_(-1, idx, True)


@pytest.mark.parametrize("wrong, hint", [
    (_mask_compares_with_threshold, "by counting"),
    (_mask_signed, "abs(w)"),
    (_mask_keeps_the_rate, "fraction removed"),
    (_mask_truncates, "int() truncates"),
    (_mask_rounds_up, "rounds up (ceil)"),
    (_mask_rounds_halves_up, "half to the even number"),
    (_mask_keeps_the_smallest, "you kept the smallest"),
    (_mask_flat, "mask.view_as(w)"),
    (_mask_of_floats, "bool tensor"),
    (_mask_ranks_each_row, "rank all 36 together"),
], ids=["compares_with_threshold", "signed", "keeps_the_rate", "truncates", "rounds_up",
        "rounds_halves_up", "keeps_the_smallest", "flat", "floats", "ranks_each_row"])
def test_magnitude_mask_rejects_a_typical_mistake_and_names_it(wrong, hint, capsys):
    assert_rejected_with(check.magnitude_mask, wrong, hint, capsys)


def test_magnitude_mask_reports_the_truncation_on_a_4d_conv_weight(capsys):
    _, out = judge(check.magnitude_mask, _mask_truncates, capsys)
    conv = next(line for line in out.splitlines() if "a 4-D conv weight" in line)
    assert "you pruned 21 — int() truncates" in conv


def _mask_by_argsort(w, rate):
    n = w.numel()
    order = w.abs().flatten().argsort(descending=True)
    m = torch.zeros(n, dtype=torch.bool)
    m[order[:n - round(rate * n)]] = True
    return m.reshape(w.shape)


def _mask_with_torch_round(w, rate):
    """torch.round, like Python's round, sends a half to the even number."""
    k = int(torch.round(torch.tensor(rate * w.numel(), dtype=torch.float64)))
    keep = torch.ones(w.numel(), dtype=torch.bool)
    keep[w.abs().flatten().topk(k, largest=False).indices] = False
    return keep.view_as(w)


@pytest.mark.parametrize("right", [prune.magnitude_mask, _mask_by_argsort, _mask_with_torch_round])
def test_magnitude_mask_accepts_right_answers(right, capsys):
    assert_accepted(check.magnitude_mask, right, capsys)


# -- magnitude_threshold ---------------------------------------------------------------------

def _threshold_counting(k_of, scores=lambda w: w.abs().flatten(), guard=True):
    def threshold(w, rate):
        k = k_of(w.numel(), rate)
        if guard and k == 0:
            return 0.0
        return scores(w).kthvalue(k).values.item()
    return threshold


_threshold_truncates = _threshold_counting(lambda n, r: int(r * n))
_threshold_signed = _threshold_counting(lambda n, r: round(r * n), scores=lambda w: w.flatten())
_threshold_smallest_kept = _threshold_counting(lambda n, r: round(r * n) + 1)
_threshold_keeps_the_rate = _threshold_counting(lambda n, r: round((1 - r) * n) if r else 0)
_threshold_rounds_up = _threshold_counting(lambda n, r: math.ceil(r * n))
_threshold_rounds_halves_up = _threshold_counting(lambda n, r: math.floor(r * n + 0.5))
_threshold_no_rate_zero = _threshold_counting(lambda n, r: round(r * n), guard=False)
_threshold_no_flatten = _threshold_counting(lambda n, r: round(r * n), scores=lambda w: w.abs())


@pytest.mark.parametrize("wrong, hint", [
    (_threshold_truncates, "use round()"),
    (_threshold_signed, "abs(w)"),
    (_threshold_smallest_kept, "smallest kept |w|"),
    (_threshold_keeps_the_rate, "fraction removed"),
    (_threshold_rounds_up, "rounds up (ceil)"),
    (_threshold_rounds_halves_up, "half to the even number"),
    (_threshold_no_rate_zero, "no 0-th smallest"),
    (_threshold_no_flatten, "rank every weight of the tensor together"),
], ids=["truncates", "signed", "smallest_kept", "keeps_the_rate", "rounds_up",
        "rounds_halves_up", "no_rate_zero", "no_flatten"])
def test_magnitude_threshold_rejects_a_typical_mistake_and_names_it(wrong, hint, capsys):
    assert_rejected_with(check.magnitude_threshold, wrong, hint, capsys)


def _threshold_by_sorting(w, rate):
    k = round(rate * w.numel())
    return float(w.abs().flatten().sort().values[k - 1]) if k else 0.0


@pytest.mark.parametrize("right", [prune.magnitude_threshold, _threshold_by_sorting])
def test_magnitude_threshold_accepts_right_answers(right, capsys):
    assert_accepted(check.magnitude_threshold, right, capsys)


# -- quantize_dequantize ---------------------------------------------------------------------

def _qdq(*, widen=True, guard="slice", rounding=torch.round, clamp=True, zp_round=True,
         steps=lambda b: 2 ** b - 1, axis_is=None, dequantize=True, inplace=False):
    """A learner's fake quantization with one typical mistake switched on."""
    def fn(x, bits, axis=None):
        axis = axis if axis_is is None else axis_is(axis)
        dims = tuple(d for d in range(x.dim()) if axis is None or d != axis % x.dim())
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        if widen:
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        if guard == "tensor" and not x.any():
            return x.clone()
        scale = (hi - lo) / steps(bits)
        if guard == "slice":
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = -lo / scale
        zp = torch.round(zp) if zp_round else zp
        q = rounding(x / scale) + zp
        q = q.clamp(0, 2 ** bits - 1) if clamp else q
        if not dequantize:
            return q.to(torch.int32)
        if inplace:
            return x.copy_((q - zp) * scale)
        return (q - zp) * scale
    return fn


@pytest.mark.parametrize("mistake, hint", [
    (dict(widen=False), "widen the range to include 0"),
    (dict(guard="tensor"), "guard each slice's scale of 0"),
    (dict(guard=None), "guard against a scale of 0"),
    (dict(rounding=torch.floor), "round to the nearest level"),
    (dict(rounding=torch.trunc), "round to the nearest level"),
    (dict(clamp=False), "clamp the codes"),
    (dict(zp_round=False), "round the zero point"),
    (dict(steps=lambda b: 2 ** b), "half a step"),
    (dict(axis_is=lambda axis: None), "own min, max, scale and zero point"),
    (dict(axis_is=lambda axis: 0 if axis is None else axis), "one scale covers the whole tensor"),
    (dict(dequantize=False), "dequantize back to floats"),
    (dict(inplace=True), "modified in place"),
], ids=["no_widening", "guards_only_the_tensor", "no_guard", "floor", "trunc", "no_clamp",
        "zero_point_not_rounded", "2**bits_steps", "ignores_axis", "always_per_channel",
        "returns_codes", "in_place"])
def test_quantize_dequantize_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _qdq(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.quantize_dequantize, wrong, hint, capsys)


def test_quantize_dequantize_rejects_a_symmetric_answer(capsys):
    def symmetric(x, bits, axis=None):
        return qmath.quantize_dequantize(x, bits, axis=axis, symmetric=True)
    accepted, out = judge(check.quantize_dequantize, symmetric, capsys)
    assert not accepted and "expected:" in out


def test_a_pruned_filter_is_a_slice_check_not_only_a_tensor_check(capsys):
    _, out = judge(check.quantize_dequantize, _qdq(guard="tensor"), capsys)
    assert "an all-zero tensor or filter: one all-zero filter" in out
    assert "nan" in out.lower()


def _qdq_channels_first(x, bits, axis=None):
    """Moves ``axis`` to the front and flattens the rest; clamps before adding the zero point."""
    moved = x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)
    lo = moved.min(1, keepdim=True).values.clamp(max=0)
    hi = moved.max(1, keepdim=True).values.clamp(min=0)
    scale = ((hi - lo) / (2 ** bits - 1)).masked_fill(hi == lo, 1.0)
    zp = (-lo / scale).round()
    out = torch.clamp(torch.round(moved / scale), -zp, 2 ** bits - 1 - zp) * scale
    if axis is None:
        return out.reshape(x.shape)
    return out.reshape(x.movedim(axis, 0).shape).movedim(0, axis)


@pytest.mark.parametrize("right", [
    lambda x, bits, axis=None: qmath.quantize_dequantize(x, bits, axis=axis),
    _qdq(), _qdq_channels_first], ids=["reference", "plain", "channels_first"])
def test_quantize_dequantize_accepts_right_answers(right, capsys):
    assert_accepted(check.quantize_dequantize, right, capsys)


# -- kd_loss ---------------------------------------------------------------------------------

def _kd(*, soft="kl", Ts=True, Tt=True, scale=lambda T: T * T, hard_T=False,
        weights=lambda a: (a, 1 - a), detach=True, reduction="batchmean"):
    """A learner's distillation loss with one typical mistake switched on."""
    def fn(s, t, y, T, alpha):
        t = t.detach() if detach else t
        log_q = F.log_softmax(s / T if Ts else s, 1)
        t_T = t / T if Tt else t
        if soft == "kl":
            term = F.kl_div(log_q, F.softmax(t_T, 1), reduction=reduction)
        elif soft == "reverse":
            term = F.kl_div(F.log_softmax(t_T, 1), log_q.exp(), reduction=reduction)
        elif soft == "softmax_input":
            term = F.kl_div(log_q.exp(), F.softmax(t_T, 1), reduction=reduction)
        elif soft == "log_target_missing":
            term = F.kl_div(log_q, F.log_softmax(t_T, 1), reduction=reduction)
        elif soft == "soft_ce":
            term = -(F.softmax(t_T, 1) * log_q).sum(1).mean()
        w_soft, w_hard = weights(alpha)
        return w_soft * scale(T) * term + w_hard * F.cross_entropy(s / T if hard_T else s, y)
    return fn


@pytest.mark.parametrize("mistake, hint", [
    (dict(scale=lambda T: 1.0), "multiply the soft term by T^2"),
    (dict(soft="soft_ce", scale=lambda T: 1.0), "multiply the soft term by T^2"),
    (dict(scale=lambda T: T), "(T * T), not by T"),
    (dict(soft="reverse"), "KL(student || teacher)"),
    (dict(Tt=False), "divide the teacher's logits by T as well"),
    (dict(Ts=False), "divide the student's logits by T as well"),
    (dict(soft="soft_ce", Ts=False), "divide the student's logits by T as well"),
    (dict(Ts=False, Tt=False), "before the softmax (both student and teacher)"),
    (dict(reduction="mean"), "reduction='batchmean'"),
    (dict(soft="softmax_input"), "not probabilities (softmax)"),
    (dict(soft="log_target_missing"), "NaN or inf"),
    (dict(hard_T=True), "the hard term uses the student's logits without T"),
    (dict(weights=lambda a: (1 - a, a)), "not the other way round"),
    (dict(weights=lambda a: (a, 0.0)), "add the hard term"),
    (dict(weights=lambda a: (1.0, 1.0)), "weigh the terms"),
    (dict(weights=lambda a: (1.0, 1 - a)), "weigh the terms"),
    (dict(detach=False), ".detach() them"),
], ids=["no_T_squared", "soft_ce_no_T_squared", "T_not_squared", "reversed_kl",
        "teacher_without_T", "student_without_T", "soft_ce_student_without_T", "no_T",
        "mean_over_elements", "softmax_as_input", "log_softmax_as_target", "hard_term_with_T",
        "alpha_swapped", "no_hard_term", "no_weights", "soft_term_unweighted",
        "teacher_not_detached"])
@pytest.mark.filterwarnings("ignore:reduction.*'mean'")
def test_kd_loss_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _kd(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.kd_loss, wrong, hint, capsys)


def test_kd_loss_rejects_a_float_instead_of_a_tensor(capsys):
    def as_float(s, t, y, T, alpha):
        return distill.kd_loss(s, t, y, T, alpha).item()
    assert_rejected_with(check.kd_loss, as_float, "0-dim tensor", capsys)


def _kd_soft_cross_entropy_by_hand(s, t, y, T, alpha):
    p = F.softmax(t.detach() / T, dim=1)
    soft = -(p * F.log_softmax(s / T, dim=1)).sum(dim=1).mean()
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(s, y)


def _kd_soft_cross_entropy_with_probability_targets(s, t, y, T, alpha):
    soft = F.cross_entropy(s / T, F.softmax(t.detach() / T, dim=1))
    return alpha * T ** 2 * soft + (1 - alpha) * F.cross_entropy(s, y)


def _kd_kl_with_log_target(s, t, y, T, alpha):
    soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t.detach() / T, -1),
                    reduction="batchmean", log_target=True)
    return alpha * soft * T * T + (1 - alpha) * F.cross_entropy(s, y)


@pytest.mark.parametrize("right", [
    distill.kd_loss, _kd(), _kd_kl_with_log_target, _kd(soft="soft_ce"),
    _kd_soft_cross_entropy_by_hand, _kd_soft_cross_entropy_with_probability_targets,
], ids=["reference", "kl_div", "kl_div_log_target", "soft_ce", "soft_ce_by_hand",
        "soft_ce_probability_targets"])
def test_kd_loss_accepts_the_kl_form_and_the_soft_cross_entropy_form(right, capsys):
    assert_accepted(check.kd_loss, right, capsys)


def test_the_soft_cross_entropy_differs_from_the_kl_only_by_the_teachers_entropy():
    """Why both forms are right: -sum p log q = KL(p || q) + H(p), and H(p) has no student in it."""
    s = torch.randn(5, 4, requires_grad=True)
    t, y, T, alpha = torch.randn(5, 4), torch.randint(0, 4, (5,)), 3.0, 0.6
    kl, ce = distill.kd_loss(s, t, y, T, alpha), _kd_soft_cross_entropy_by_hand(s, t, y, T, alpha)
    p = F.softmax(t / T, 1)
    entropy = -(p * p.log()).sum(1).mean()
    assert float((ce - kl).detach()) == pytest.approx(float(alpha * T * T * entropy), rel=1e-5)
    g_kl, = torch.autograd.grad(kl, s)
    g_ce, = torch.autograd.grad(ce, s)
    assert torch.allclose(g_kl, g_ce, atol=1e-6)


# -- preprocess ------------------------------------------------------------------------------

@pytest.mark.parametrize("wrong, hint", [
    (lambda p, m, s: ((p - m) / s).astype(np.float32)[:, None], "divide by 255 first"),
    (lambda p, m, s: ((p / 256 - m) / s).astype(np.float32)[:, None], "not 256"),
    (lambda p, m, s: (p / 255).astype(np.float32)[:, None], "subtract the mean and divide"),
    (lambda p, m, s: ((p / 255 - m) * s).astype(np.float32)[:, None], "do not multiply"),
    (lambda p, m, s: ((p / 255) / s - m).astype(np.float32)[:, None], "subtract the mean before"),
    (lambda p, m, s: ((p / 255 - m) / s)[:, None], "refuses float64"),
    (lambda p, m, s: ((p / 255 - m) / s).astype(np.float32), "add the channel axis"),
    (lambda p, m, s: ((p / 255 - m) / s).astype(np.float32)[..., None], "not last"),
    (lambda p, m, s: torch.from_numpy(((p / 255 - m) / s).astype(np.float32)[:, None]),
     "NumPy array"),
    (lambda p, m, s: np.stack([(i / 255 - (i / 255).mean()) / ((i / 255).std() + 1e-8)
                               for i in p]).astype(np.float32)[:, None],
     "never statistics of the image"),
], ids=["no_255", "divides_by_256", "no_mean_std", "multiplies_std", "std_before_mean",
        "float64", "no_channel_axis", "channel_axis_last", "torch_tensor", "per_image_stats"])
def test_preprocess_rejects_a_typical_mistake_and_names_it(wrong, hint, capsys):
    assert_rejected_with(check.preprocess, wrong, hint, capsys)


def test_preprocess_rejects_changing_the_pixels_in_place(capsys):
    def in_place(p, m, s):
        out = ((p / 255 - m) / s).astype(np.float32)[:, None]
        p[...] = 0
        return out
    assert_rejected_with(check.preprocess, in_place, "do not change the caller's pixels", capsys)


@pytest.mark.parametrize("right", [
    lambda p, m, s: ((p.astype(np.float32) / 255 - m) / s).astype(np.float32)[:, None],
    lambda p, m, s: np.expand_dims(((p / 255.0 - m) / s).astype(np.float32), 1),
    lambda p, m, s: ((p - 255 * m) / (255 * s)).astype(np.float32).reshape(
        p.shape[0], 1, *p.shape[1:]),
], ids=["astype_first", "expand_dims", "scaled_constants"])
def test_preprocess_accepts_right_answers(right, capsys):
    assert_accepted(check.preprocess, right, capsys)


# -- choose_model (06) ------------------------------------------------------------------------

def _choose(split="val", key="accuracy", ties="faster", none_ok=True):
    """The selection rule with one typical mistake switched on."""
    def choose(records, teacher, bar):
        pool = [r for r in records if r is not teacher]
        meeting = [r for r in pool if targets.meets(r, teacher, bar, split)]
        if not meeting:
            if none_ok:
                return None, "nothing meets the bar"
            meeting = pool
        acc = "val_accuracy" if split == "val" else "accuracy"
        if key == "speed":
            return min(meeting, key=lambda r: r["latency_b1_ms"]), "fastest"
        if ties == "first":
            best = max(r[acc] for r in meeting)
            return next(r for r in meeting if r[acc] == best), "first of the best"
        return max(meeting, key=lambda r: (r[acc], -r["latency_b1_ms"])), "most accurate"
    return choose


@pytest.mark.parametrize("mistake, hint", [
    ({"split": "test"}, "on validation"),
    ({"key": "speed"}, "most accurate"),
    ({"ties": "first"}, "faster model"),
    ({"none_ok": False}, "return None"),
], ids=["chooses-on-test", "fastest-instead-of-most-accurate", "ties-to-the-first",
        "ships-the-best-of-the-rest"])
def test_choose_model_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _choose(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.choose_model, wrong, hint, capsys)


def _choose_by_sorting(records, teacher, bar):
    ok = sorted((r for r in records if r is not teacher and targets.meets(r, teacher, bar, "val")),
                key=lambda r: (-r["val_accuracy"], r["latency_b1_ms"]))
    return (ok[0], "best on validation") if ok else (None, "no model meets the bar")


@pytest.mark.parametrize("right", [targets.choose, _choose(), _choose_by_sorting],
                         ids=["reference", "max-with-tiebreak", "sorted"])
def test_choose_model_accepts_the_rule_written_several_ways(right, capsys):
    assert_accepted(check.choose_model, right, capsys)


def test_choose_model_wants_a_reason_with_the_choice(capsys):
    def no_reason(records, teacher, bar):
        return targets.choose(records, teacher, bar)[0]
    assert_rejected_with(check.choose_model, no_reason, "a sentence saying why", capsys)


# -- fold_bn (02) -----------------------------------------------------------------------------

def _fold(eps=True, sqrt=True, mean=True, beta=True, conv_bias=True, inplace=False):
    """Batch-norm folding with one typical mistake switched on."""
    def fold(conv, bn):
        var = bn.running_var + (bn.eps if eps else 0.0)
        scale = bn.weight.detach() / (torch.sqrt(var) if sqrt else var)
        b = conv.bias.detach() if (conv.bias is not None and conv_bias) else torch.zeros(len(scale))
        out = conv if inplace else torch.nn.Conv2d(conv.in_channels, conv.out_channels,
                                                   conv.kernel_size, conv.stride, conv.padding,
                                                   bias=True)
        if out.bias is None:
            out.bias = torch.nn.Parameter(torch.zeros(len(scale)))
        with torch.no_grad():
            out.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            out.bias.copy_((bn.bias if beta else 0) + (b - (bn.running_mean if mean else 0)) * scale)
        return out
    return fold


@pytest.mark.parametrize("mistake, hint", [
    ({"eps": False}, "sqrt(var + eps)"),
    ({"sqrt": False}, "not the variance"),
    ({"mean": False}, "running mean"),
    ({"beta": False}, "add beta"),
    ({"conv_bias": False}, "conv's own bias"),
    ({"inplace": True}, "in place"),
], ids=["no-eps", "variance-not-std", "no-mean", "no-beta", "drops-conv-bias", "in-place"])
def test_fold_bn_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _fold(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.fold_bn, wrong, hint, capsys)


@pytest.mark.parametrize("right", [qmath.fold_bn, _fold()], ids=["reference", "by-hand"])
def test_fold_bn_accepts_a_correct_fold(right, capsys):
    assert_accepted(check.fold_bn, right, capsys)


# -- factor_conv (04) -------------------------------------------------------------------------

def _factor(smallest=False, stride=True, bias=True, transpose=False, balanced=True, inplace=False):
    """Channel SVD of one conv with one typical mistake switched on."""
    def factor(conv, rank):
        w = conv.weight.detach().flatten(1)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        idx = torch.arange(len(s) - rank, len(s)) if smallest else torch.arange(rank)
        u, s, vh = u[:, idx], s[idx], vh[idx]
        a, b = (s.sqrt()[:, None] * vh, u * s.sqrt()) if balanced else (s[:, None] * vh, u)
        first = torch.nn.Conv2d(conv.in_channels, rank, conv.kernel_size,
                                conv.stride if stride else 1, conv.padding, bias=False)
        second = torch.nn.Conv2d(rank, conv.out_channels, 1, bias=bias and conv.bias is not None)
        with torch.no_grad():
            k = conv.kernel_size
            first.weight.copy_(a.reshape(rank, k[0], k[1], conv.in_channels).permute(0, 3, 1, 2)
                               if transpose else a.reshape(first.weight.shape))
            second.weight.copy_(b[:, :, None, None])
            if second.bias is not None:
                second.bias.copy_(conv.bias)
            if inplace:
                conv.weight.mul_(0.5)
        return torch.nn.Sequential(first, second)
    return factor


@pytest.mark.parametrize("mistake, hint", [
    ({"smallest": True}, "largest"),
    ({"stride": False}, "stride and padding"),
    ({"bias": False}, "bias goes on the second"),
    ({"transpose": True}, "reshape of the filters"),
    ({"inplace": True}, "in place"),
], ids=["smallest-values", "loses-stride", "drops-bias", "wrong-reshape", "in-place"])
def test_factor_conv_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _factor(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.factor_conv, wrong, hint, capsys)


@pytest.mark.parametrize("right", [lambda c, r: lowrank.factor(c, r), _factor(),
                                   _factor(balanced=False)],
                         ids=["reference", "balanced", "all-of-S-in-one-factor"])
def test_factor_conv_accepts_any_split_of_the_singular_values(right, capsys):
    assert_accepted(check.factor_conv, right, capsys)


# -- fake_quant_ste (02) ----------------------------------------------------------------------

def _ste(detach=True, clip_grad=True, zero_point=True, rounding=torch.round, autograd=False):
    """Fake quantization with the straight-through estimator, one typical mistake switched on."""
    def fq(x, scale, zp, qmin, qmax):
        z = zp if zero_point else 0
        q = (torch.clamp(rounding(x / scale) + z, qmin, qmax) - z) * scale
        if not detach:
            return q
        inside = x.clamp((qmin - zp) * scale, (qmax - zp) * scale) if clip_grad else x
        return inside + (q - inside).detach()
    return fq


class _STEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zp, qmin, qmax):
        code = torch.round(x / scale) + zp
        ctx.save_for_backward((code >= qmin) & (code <= qmax))
        return (code.clamp(qmin, qmax) - zp) * scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None


@pytest.mark.parametrize("mistake, hint", [
    ({"detach": False}, "zero derivative"),
    ({"clip_grad": False}, "zero where x was clipped"),
    ({"zero_point": False}, "the forward values"),
    ({"rounding": torch.floor}, "the forward values"),
], ids=["no-straight-through", "gradient-through-clipped-values", "ignores-zero-point", "floor"])
def test_fake_quant_ste_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _ste(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.fake_quant_ste, wrong, hint, capsys)


@pytest.mark.parametrize("right", [qmath.fake_quant_ste, _ste(), _STEFunction.apply],
                         ids=["reference", "clamp-then-detach", "autograd-function"])
def test_fake_quant_ste_accepts_the_detach_trick_and_an_autograd_function(right, capsys):
    assert_accepted(check.fake_quant_ste, right, capsys)


# -- csr_bytes (01) ---------------------------------------------------------------------------

def _csr(pointers="rows+1", columns=True, zeros=False, fixed_index=None):
    def csr(weight, index_bytes=8):
        ib = fixed_index or index_bytes
        w = weight.reshape(weight.shape[0], -1)
        n = w.numel() if zeros else int((w != 0).sum())
        rows = {"rows+1": w.shape[0] + 1, "rows": w.shape[0], "none": 0}[pointers]
        return n * (4 + (ib if columns else 0)) + rows * ib
    return csr


@pytest.mark.parametrize("mistake, hint", [
    ({"pointers": "none"}, "add the row pointers"),
    ({"pointers": "rows"}, "rows + 1 row pointers"),
    ({"columns": False}, "column index"),
    ({"zeros": True}, "zeros are not stored"),
    ({"fixed_index": 8}, "index_bytes"),
], ids=["no-row-pointers", "rows-not-rows+1", "no-column-indices", "counts-zeros", "always-int64"])
def test_csr_bytes_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _csr(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.csr_bytes, wrong, hint, capsys)


@pytest.mark.parametrize("right", [prune.csr_bytes, _csr()], ids=["reference", "by-hand"])
def test_csr_bytes_accepts_the_count_that_torch_stores(right, capsys):
    assert_accepted(check.csr_bytes, right, capsys)


# -- int_linear (02) --------------------------------------------------------------------------

def _int_linear(xzp=True, yzp=True, bias=True, clamp=True, floats=False):
    def lin(x_q, x_zp, w_q, bias_q, m, y_zp):
        acc = (x_q.long() - (x_zp if xzp else 0)) @ w_q.long().T + (bias_q.long() if bias else 0)
        y = torch.round(acc.double() * torch.as_tensor(m, dtype=torch.float64)) + (y_zp if yzp else 0)
        if floats:
            return y.clamp(0, 255)
        return (y.clamp(0, 255) if clamp else y).long().to(torch.uint8)
    return lin


@pytest.mark.parametrize("mistake, hint", [
    ({"xzp": False}, "input's zero point"),
    ({"yzp": False}, "output's zero point"),
    ({"bias": False}, "int32 bias"),
    ({"clamp": False}, "clamp to the uint8 codes"),
    ({"floats": True}, "not floats"),
], ids=["no-input-zero-point", "no-output-zero-point", "no-bias", "wraps-instead-of-clamping",
        "returns-floats"])
def test_int_linear_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _int_linear(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.int_linear, wrong, hint, capsys)


@pytest.mark.parametrize("right", [qmath.int_linear, _int_linear()],
                         ids=["fixed-point-reference", "rounded-float-multiplier"])
def test_int_linear_accepts_integer_codes_within_one_step(right, capsys):
    assert_accepted(check.int_linear, right, capsys)


def test_fixed_point_multipliers_reproduce_m_to_31_bits():
    m = torch.tensor([0.3, 1e-4, 0.9999999, 2.0 ** -20], dtype=torch.float64)
    m0, shift = qmath.fixed_point(m)
    assert ((m0 >= 2 ** 30) & (m0 < 2 ** 31)).all()
    assert torch.allclose(m0.double() * 2.0 ** (-31 - shift), m, rtol=2 ** -30, atol=0)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        qmath.fixed_point(torch.tensor([1.5]))


# -- kmeans_quantize (02) ---------------------------------------------------------------------

def _kmeans(iters=30, init="linear", assign="nearest", empty="keep", k_extra=0):
    def km(w, bits):
        k = 2 ** bits + k_extra
        flat = w.flatten()
        if init == "linear":
            c = torch.linspace(float(flat.min()), float(flat.max()), k)
        else:
            c = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(5))[:k]].sort().values
        for _ in range(iters):
            d = (flat[:, None] - c[None])
            idx = d.abs().argmin(1) if assign == "nearest" else (d.clamp_min(0).argmin(1))
            counts = torch.bincount(idx, minlength=k).float()
            sums = torch.zeros(k).index_add_(0, idx, flat)
            c = torch.where(counts > 0, sums / counts.clamp_min(1), c) if empty == "keep" else sums / counts
        idx = (flat[:, None] - c[None]).abs().argmin(1) if assign == "nearest" else idx
        return c, idx.view(w.shape), c[idx].view(w.shape)
    return km


@pytest.mark.parametrize("mistake, hint", [
    ({"iters": 0}, "mean of its weights"),
    ({"init": "random"}, "linearly over [min, max]"),
    ({"assign": "below"}, "nearest"),
    ({"k_extra": 1}, "4 shared values"),
    ({"empty": "divide"}, "empty cluster"),
], ids=["no-iterations", "random-start", "assigns-to-the-centroid-below", "one-centroid-too-many",
        "empty-cluster-nan"])
def test_kmeans_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _kmeans(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.kmeans_quantize, wrong, hint, capsys)


@pytest.mark.parametrize("right", [qmath.kmeans_quantize, _kmeans()], ids=["reference", "by-hand"])
def test_kmeans_accepts_lloyds_algorithm_from_the_linear_start(right, capsys):
    assert_accepted(check.kmeans_quantize, right, capsys)


# -- prune_pair (01) --------------------------------------------------------------------------

def _prune_pair(norm=2, largest=True, slice_bn=True, next_axis=1, by_position=False):
    def pp(conv, bn, nxt, rate):
        keep = round((1 - rate) * conv.out_channels)
        score = conv.weight.detach().flatten(1).norm(p=norm, dim=1)
        idx = (torch.arange(keep) if by_position else
               score.topk(keep, largest=largest).indices.sort().values)
        c = torch.nn.Conv2d(conv.in_channels, keep, 3, padding=1, bias=False)
        b = torch.nn.BatchNorm2d(keep) if slice_bn else torch.nn.BatchNorm2d(keep)
        n = torch.nn.Conv2d(keep, nxt.out_channels, 3, padding=1)
        with torch.no_grad():
            c.weight.copy_(conv.weight[idx])
            if slice_bn:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(b, name).copy_(getattr(bn, name)[idx])
            n.weight.copy_(nxt.weight[:, idx] if next_axis == 1 else nxt.weight[:, :keep])
            n.bias.copy_(nxt.bias)
        return c.eval(), b.eval(), n.eval()
    return pp


@pytest.mark.parametrize("mistake, hint", [
    ({"norm": 1}, "L2 norm, not L1"),
    ({"largest": False}, "*largest*"),
    ({"slice_bn": False}, "slice the batch norm"),
    ({"next_axis": 0}, "*input*"),
    ({"by_position": True}, "not by position"),
], ids=["l1", "smallest", "fresh-batch-norm", "next-conv-sliced-by-position", "first-channels"])
def test_prune_pair_rejects_a_typical_mistake_and_names_it(mistake, hint, capsys):
    wrong = _prune_pair(**mistake)
    wrong.__name__ = repr(mistake)
    assert_rejected_with(check.prune_pair, wrong, hint, capsys)


@pytest.mark.parametrize("right", [prune.prune_pair, _prune_pair()], ids=["reference", "by-hand"])
def test_prune_pair_accepts_the_sliced_block(right, capsys):
    assert_accepted(check.prune_pair, right, capsys)
