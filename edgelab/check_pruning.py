"""Checkers for 01_pruning's exercises: the magnitude mask and threshold, a sparse weight's
bytes, channels removed by hand."""
from __future__ import annotations

import math

from .check import Exercise, _call, _fmt, _show, register

__all__ = ["magnitude_mask", "magnitude_threshold", "csr_bytes", "prune_pair"]

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


magnitude_mask = register(Exercise(
    "magnitude_mask", notebook="01_pruning", signature="fn(weight, rate) -> bool mask",
    checks="True for the kept weights, all but the round(rate * n) smallest |w| of the whole "
    "tensor, exactly (ties included), for any shape.",
    hint="rank abs(w) of the whole tensor (w.abs().flatten()); keep the n - round(rate * n) "
    "largest by counting (topk), not by comparing with a threshold (ties)",
    minutes=10, reference="edgelab.prune.magnitude_mask", cases=_mask_cases))


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


magnitude_threshold = register(Exercise(
    "magnitude_threshold", notebook="01_pruning", signature="fn(weight, rate) -> float",
    checks="the largest pruned magnitude, round(rate * n) of them pruned; 0.0 at rate 0.",
    hint="k = round(rate * n); the k-th smallest abs(w): w.abs().flatten().kthvalue(k), 0.0 when "
    "k = 0", minutes=5, reference="edgelab.prune.magnitude_threshold", cases=_threshold_cases))
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


csr_bytes = register(Exercise(
    "csr_bytes", notebook="01_pruning", signature="fn(weight, index_bytes) -> int",
    checks="the bytes of the weight, reshaped to (out, in*k*k), as a CSR matrix with float32 "
    "values, against torch's own CSR tensor.",
    hint="4 bytes per non-zero value, one column index per value, and rows + 1 row pointers, "
    "each index index_bytes long", minutes=10, reference="edgelab.prune.csr_bytes",
    cases=_csr_cases))
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


prune_pair = register(Exercise(
    "prune_pair", notebook="01_pruning",
    signature="fn(conv, bn, next_conv, rate) -> (conv, bn, next_conv)",
    checks="the thin block computes what the original computes with the removed channels' "
    "post-ReLU activations zeroed (a removed filter does not output zero after the batch norm: "
    "beta - gamma*mean/std can pass the ReLU), channels ranked by their filters' L2 norm.",
    hint="keep the filters of largest L2 norm; slice the conv's outputs, all four batch-norm "
    "tensors and the next conv's inputs (weight[:, idx]) with the same indices, in new modules",
    minutes=15, reference="edgelab.prune.prune_pair", cases=_prune_pair_cases))
