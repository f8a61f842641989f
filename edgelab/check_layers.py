"""Checkers for exercises that rebuild a layer's arithmetic: an int8 linear layer in integers,
k-means weight sharing (02), one convolution factored by channel SVD (04)."""
from __future__ import annotations

from .check import Exercise, _call, _close_to_scale, _fmt, _show, register

__all__ = ["int_linear", "kmeans_quantize", "factor_conv"]

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


int_linear = register(Exercise(
    "int_linear", notebook="02_quantization",
    signature="fn(x_q, x_zp, w_q, bias_q, m, y_zp) -> uint8 codes",
    checks="within one output code of ``round(((x_q - x_zp) @ w_q.T + bias_q) * m) + y_zp``, "
    "clamped to 0..255, on fixed cases with non-zero zero points, one or one multiplier per "
    "output.",
    hint="accumulate (x_q - x_zp) @ w_q.T + bias_q in int32, then round(acc * m) + y_zp, "
    "clamped to 0..255, as uint8", minutes=20, reference="edgelab.qmath.int_linear",
    cases=_int_linear_cases))
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


kmeans_quantize = register(Exercise(
    "kmeans_quantize", notebook="02_quantization",
    signature="fn(w, bits) -> (centroids, indices, reconstruction)",
    checks="at most 2^bits shared values, each weight at its nearest centroid, each centroid "
    "its members' mean, from the linear initialisation over [min, max].",
    hint="start from torch.linspace(min, max, 2**bits); repeat: each weight to its nearest "
    "centroid, each centroid to its members' mean (an empty one stays put)", minutes=15,
    reference="edgelab.qmath.kmeans_quantize", cases=_kmeans_cases))
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


factor_conv = register(Exercise(
    "factor_conv", notebook="04_low_rank",
    signature="fn(conv, rank) -> nn.Sequential(k x k conv C_in -> rank, 1x1 conv rank -> C_out)",
    checks="exact at full rank; at lower rank the weight error (Frobenius) equals the discarded "
    "singular values' energy, sqrt(sum of s_i^2 for i > rank).",
    hint="SVD of the weight as C_out x (C_in*k*k): the k x k conv holds Vh[:r] (the original "
    "stride and padding), the 1x1 conv U[:, :r] * S[:r] and the bias", minutes=15,
    reference="edgelab.lowrank.factor", cases=_factor_cases))
