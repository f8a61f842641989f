"""Checkers for 02_quantization's exercises on the affine map: quantize then dequantize,
batch-norm folding, the straight-through estimator."""
from __future__ import annotations

from .check import Exercise, _call, _close_to_scale, _fmt, _show, register

__all__ = ["quantize_dequantize", "fold_bn", "fake_quant_ste"]

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


quantize_dequantize = register(Exercise(
    "quantize_dequantize", notebook="02_quantization", signature="fn(x, bits, axis=None)",
    checks="asymmetric fake quantization (quantize to ``bits``-bit unsigned codes, then "
    "dequantize), per tensor or per slice along ``axis``.",
    hint="widen the range to include 0; scale = (hi - lo) / (2**bits - 1), an integer zero "
    "point; round, clamp to [0, 2**bits - 1], dequantize; per slice: reduce over the other "
    "dimensions (keepdim=True)", minutes=15,
    # its default is symmetric=False, the exercise's asymmetric map
    reference="edgelab.qmath.quantize_dequantize", cases=_qdq_cases))
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


fold_bn = register(Exercise(
    "fold_bn", notebook="02_quantization", signature="fn(conv, bn) -> conv",
    checks="in eval mode the folded conv computes ``bn(conv(x))`` to 1e-5 of the output's "
    "scale, with and without a conv bias, and leaves both inputs unchanged.",
    hint="s = gamma / sqrt(var + eps); weight * s per output channel, bias = beta + (b - mean) "
    "* s, in a new nn.Conv2d with the same stride and padding", minutes=10,
    reference="edgelab.qmath.fold_bn", cases=_fold_cases))
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


fake_quant_ste = register(Exercise(
    "fake_quant_ste", notebook="02_quantization",
    signature="fn(x, scale, zero_point, qmin, qmax)",
    checks="forward values and the gradient with respect to x, inside and outside the clip "
    "range, against ``torch.fake_quantize_per_tensor_affine``.",
    hint="clamp x to [(qmin - zp) * scale, (qmax - zp) * scale], then x + (q - x).detach(): "
    "the forward rounds, the gradient passes straight through", minutes=10,
    reference="edgelab.qmath.fake_quant_ste", cases=_ste_cases))
