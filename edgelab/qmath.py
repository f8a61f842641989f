"""Quantization's numbers: the affine map between floats and integers, fake quantization of a
model's weights, and per-layer bit widths. Pure tensor arithmetic, no flows, no runtimes: this is
what notebook 02's first half teaches and its exercises check against.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["MIN_BITS", "MAX_BITS", "check_bits", "int_range", "qparams", "quantize", "dequantize",
           "quantize_dequantize", "mse_clip", "kmeans_quantize", "codebook_bytes", "fixed_point", "int_linear", "fake_quant_ste", "fold_bn", "fold_batchnorm", "relative_error", "quantizable_weights", "weight_bytes",
           "mixed_bits", "float_bytes", "fake_quantized_weights", "WithWeights", "with_weights",
           "fake_quantize_weights"]

MIN_BITS, MAX_BITS = 2, 16


def check_bits(bits) -> int:
    """``bits`` as an int, or a ValueError that names the supported range."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer codes: unsigned [0, 2^b - 1] (asymmetric) or signed ±(2^(b-1) - 1) (symmetric).

    The symmetric range drops -2^(b-1) so that +x and -x get codes of the same size."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def _reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.dim()))
    axis = axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


def qparams(x: torch.Tensor, bits: int = 8, axis: int | None = None,
            symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for ``x``: one pair (``axis=None``) or one per slice along ``axis``.

    Both come back shaped to broadcast against ``x``. The range is widened to include 0, and the
    zero point is rounded to an integer, so that 0.0 is exactly representable (padding and ReLU
    produce many exact zeros)."""
    qmin, qmax = int_range(bits, symmetric)
    dims = _reduce_dims(x, axis)
    x = x.detach().float()
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"cannot quantize a tensor with NaN or Inf: {bad} of its {x.numel()} "
                         "values are not finite, and one of them would make every scale (and so "
                         "every value) NaN. Find where they come from (a diverged training run, "
                         "a division by zero) and fix that first.")
    if symmetric:
        amax = x.abs().amax(dim=dims, keepdim=True)
        scale = amax / qmax
        zero_point = torch.zeros_like(scale)
    else:
        lo = x.amin(dim=dims, keepdim=True).clamp(max=0)
        hi = x.amax(dim=dims, keepdim=True).clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
        zero_point = None
    # A constant-zero tensor (a pruned filter) has no range: any positive scale works.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if zero_point is None:
        zero_point = (qmin - lo / scale).round().clamp(qmin, qmax)
    return scale, zero_point


def quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Float -> integer codes: divide by the scale, round to nearest, shift, clamp."""
    return (torch.round(x / scale) + zero_point).clamp(qmin, qmax)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """Integer codes -> float: undo the shift, multiply by the scale."""
    return (q - zero_point) * scale


def quantize_dequantize(x: torch.Tensor, bits: int = 8, axis: int | None = None,
                        symmetric: bool = False) -> torch.Tensor:
    """Fake quantization: round ``x`` to the ``2**bits`` levels it would have as integers, and
    return floats again. The reference the notebook's exercise is checked against."""
    scale, zero_point = qparams(x, bits, axis, symmetric)
    qmin, qmax = int_range(bits, symmetric)
    return dequantize(quantize(x.float(), scale, zero_point, qmin, qmax), scale, zero_point).to(x.dtype)


def mse_clip(w: torch.Tensor, bits: int, axis: int = 0, grid: int = 40) -> torch.Tensor:
    """Per-slice symmetric clipping thresholds that minimise the squared error of rounding *and*
    clipping, searched over ``grid`` fractions (0.2 to 1) of each slice's largest magnitude. MinMax
    takes the whole range; at 4 bits a few large weights then stretch every step, and clipping
    them buys finer steps for the rest. Returns one threshold per slice along ``axis``."""
    check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    w = w.detach().float().transpose(0, axis % w.dim()).flatten(1)
    amax = w.abs().amax(1).clamp(min=1e-12)
    best, best_err = amax.clone(), torch.full_like(amax, float("inf"))
    for frac in torch.linspace(0.2, 1.0, grid):
        t = amax * frac
        scale = (t / qmax)[:, None]
        err = ((w / scale).round().clamp(-qmax, qmax) * scale - w).pow(2).sum(1)
        better = err < best_err
        best, best_err = torch.where(better, t, best), torch.where(better, err, best_err)
    return best


def kmeans_quantize(w: torch.Tensor, bits: int, iters: int = 30
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deep Compression's weight sharing (Han et al., 2016): ``2**bits`` shared values
    (centroids) for the whole tensor, fitted by Lloyd's k-means from a linear initialisation over
    [min, max] (the initialisation the paper found best), so the result is deterministic.
    Returns (centroids, the index of each weight's centroid, the reconstructed tensor)."""
    k = 2 ** check_bits(bits)
    flat = w.detach().flatten().float()
    centroids = torch.linspace(float(flat.min()), float(flat.max()), k)
    for _ in range(iters):
        idx = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)   # nearest (sorted)
        sums = torch.zeros(k).index_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=k).float()
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.equal(new, centroids):
            break
        centroids = new.sort().values
    idx = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, idx.view(w.shape), centroids[idx].view(w.shape).to(w.dtype)


def codebook_bytes(w: torch.Tensor, bits: int) -> int:
    """A k-means-quantized tensor as stored: ``bits`` per weight (packed) plus its fp32 codebook."""
    return (w.numel() * check_bits(bits) + 7) // 8 + 4 * 2 ** bits


def fixed_point(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A positive real multiplier M < 1 as integers: M ≈ m0 · 2^-(31 + shift), m0 in
    [2^30, 2^31) (gemmlowp's and TFLite's form), so that an int32 accumulator is rescaled with
    one integer multiply and one shift."""
    m = torch.as_tensor(m, dtype=torch.float64)
    if not (m > 0).all() or not (m < 1).all():
        raise ValueError(f"the requantization multiplier s_in * s_w / s_out must be in (0, 1), got {m}")
    mantissa, exponent = torch.frexp(m)          # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = torch.round(mantissa * 2 ** 31).long()
    shift = -exponent.long()
    carry = m0 == 2 ** 31                        # mantissa rounded up to 1.0
    return torch.where(carry, m0 // 2, m0), torch.where(carry, shift - 1, shift)


def int_linear(x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias_q: torch.Tensor,
               m: torch.Tensor, y_zp: int, qmin: int = 0, qmax: int = 255) -> torch.Tensor:
    """An int8 linear layer in integers only: uint8 inputs (zero point ``x_zp``), symmetric int8
    weights (one row per output), int32 bias at scale s_x·s_w, int32 accumulation, then
    requantization by ``m`` = s_x·s_w/s_y (one per output or one for all) as a fixed-point
    multiply and a rounding shift, plus ``y_zp``, clamped to the output codes."""
    acc = (x_q.long() - x_zp) @ w_q.long().T + bias_q.long()          # int32 range in practice
    m0, shift = fixed_point(torch.as_tensor(m).expand(w_q.shape[0]))
    total = 31 + shift
    y = (acc * m0 + (1 << (total - 1))) >> total                        # round half up
    return (y + y_zp).clamp(qmin, qmax).to(torch.uint8 if qmin >= 0 else torch.int8)


def fake_quant_ste(x: torch.Tensor, scale: float, zero_point: int, qmin: int,
                   qmax: int) -> torch.Tensor:
    """Fake quantization that can be trained through: the forward pass rounds to the grid, the
    backward pass (straight-through estimator) passes the gradient unchanged where ``x`` is
    inside the grid's range and zero where it was clipped, as
    ``torch.fake_quantize_per_tensor_affine`` does."""
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    inside = x.clamp(lo, hi)            # clamp's gradient: 1 inside, 0 where clipped
    q = (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale
    return inside + (q - inside).detach()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` in eval mode: output channel c's weights times
    γ_c / sqrt(var_c + eps), and the bias β_c + (b_c - μ_c) γ_c / sqrt(var_c + eps)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_(conv.weight.detach() * scale.view(-1, 1, 1, 1))
        out.bias.copy_(bn.bias.detach() + (bias - bn.running_mean) * scale)
    return out.eval()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every eval-mode BatchNorm folded into the convolution before it, as int8
    runtimes do before they quantize (``torch.fx.experimental.optimization.fuse``; the model must
    be traceable by torch.fx)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """‖x - x̂‖ / ‖x‖: how much of the tensor quantization lost."""
    x, x_hat = x.detach().float(), x_hat.detach().float()
    return float((x - x_hat).norm() / x.norm().clamp(min=1e-12))


def quantizable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight of every Conv2d and Linear, by its state-dict key (what int8 kernels store)."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def weight_bytes(model: nn.Module, bits: int | dict[str, int], per_channel: bool) -> int:
    """Bytes the weights would take at ``bits`` per Conv/Linear weight (packed; or a width per
    weight's state-dict key), with one fp32 scale (symmetric: no zero point) per tensor or per
    output channel; everything else stays fp32 (biases, batch norm)."""
    quantized = quantizable_weights(model)
    widths = bits if isinstance(bits, dict) else dict.fromkeys(quantized, bits)
    if set(widths) != set(quantized):
        raise ValueError(f"bits per weight must name exactly the Conv/Linear weights "
                         f"{sorted(quantized)}")
    total_bits = 0
    for key, t in model.state_dict().items():
        if key in quantized:
            total_bits += t.numel() * check_bits(widths[key]) + 32 * (t.shape[0] if per_channel else 1)
        elif t.is_floating_point():
            total_bits += t.numel() * 32
    return (total_bits + 7) // 8


def mixed_bits(drop_at_min: dict[str, float], sizes: dict[str, int], budget_bits: int,
               choices=(2, 3, 4, 5, 6, 8)) -> dict[str, int]:
    """A width per layer within ``budget_bits`` weight bits in all: start every layer at the
    smallest width, then repeatedly give one more step to the layer whose modelled loss falls
    most per extra bit. A layer's loss at ``b`` bits is modelled as its measured accuracy drop at
    the smallest width times 4^-(b - min): each extra bit halves the rounding step, quartering
    the error's variance."""
    choices = sorted(check_bits(b) for b in choices)
    if set(drop_at_min) != set(sizes):
        raise ValueError("drop_at_min and sizes must name the same layers")
    bits = dict.fromkeys(sizes, choices[0])
    used = sum(n * choices[0] for n in sizes.values())
    if used > budget_bits:
        raise ValueError(f"the budget of {budget_bits:,} bits is below {choices[0]} bits a weight "
                         f"({used:,} bits)")

    def loss(k, b):
        return max(drop_at_min[k], 0.0) * 4.0 ** -(b - choices[0])

    while True:
        best, best_gain = None, 0.0
        for k, b in bits.items():
            if b == choices[-1]:
                continue
            nxt = choices[choices.index(b) + 1]
            cost = sizes[k] * (nxt - b)
            if used + cost <= budget_bits:
                gain = (loss(k, b) - loss(k, nxt)) / cost
                if best is None or gain > best_gain:
                    best, best_gain = (k, nxt, cost), gain
        if best is None:
            return bits
        k, nxt, cost = best
        bits[k], used = nxt, used + cost


def float_bytes(model: nn.Module) -> int:
    """Bytes of every floating-point tensor of the state dict at 4 bytes each (no file format)."""
    return sum(4 * t.numel() for t in model.state_dict().values() if t.is_floating_point())


def fake_quantized_weights(model: nn.Module, bits: int, per_channel: bool,
                           source: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Each Conv/Linear weight of ``model`` (or its original in ``source``), symmetric
    fake-quantized into a new tensor, by state-dict key; the model is left as it is."""
    check_bits(bits)
    if source is None:
        source = {k: w.detach() for k, w in quantizable_weights(model).items()}
    return {k: quantize_dequantize(w, bits, axis=0 if per_channel else None, symmetric=True)
            for k, w in source.items()}


class WithWeights(nn.Module):
    """``model`` run with some of its weights replaced (``torch.func.functional_call``): fake
    quantization without a copy of the model."""

    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.weights = model, weights

    def forward(self, x):
        return torch.func.functional_call(self.model, self.weights, (x,))


def with_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` with the tensors in ``weights`` (by state-dict key) used in place of its own."""
    unknown = set(weights) - set(model.state_dict())
    if unknown:
        raise KeyError(f"{type(model).__name__} has no tensors named {sorted(unknown)}")
    return WithWeights(model, weights)


def fake_quantize_weights(model: nn.Module, bits: int, per_channel: bool,
                          source: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Replace each Conv/Linear weight of ``model`` (in place) by its symmetric fake-quantized
    copy; ``source`` holds the original weights so that repeated calls do not compound."""
    check_bits(bits)
    weights = quantizable_weights(model)
    source = source if source is not None else {k: w.detach().clone() for k, w in weights.items()}
    fake = fake_quantized_weights(model, bits, per_channel, source)
    with torch.no_grad():
        for key, w in weights.items():
            w.copy_(fake[key])
    return model
