"""Quantization plumbing (edgelab.quantize), the bit-width panel and the exercise checker.

Fast: tiny tensors and tiny models, no timed asserts."""
import pytest
import torch
import torch.nn as nn

from edgelab import check, models, qmath, quantize, runtime, widgets


# ---- the affine math ----------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 17, 0, -8, 8.0, "8", None, True])
def test_bits_outside_2_to_16_is_one_clear_error(bits):
    with pytest.raises(ValueError, match="from 2 to 16"):
        qmath.check_bits(bits)
    with pytest.raises(ValueError, match="from 2 to 16"):
        qmath.quantize_dequantize(torch.ones(3), bits)


def test_bits_at_the_edges_of_the_range_work():
    x = torch.linspace(-1, 1, 50)
    assert qmath.quantize_dequantize(x, 2).unique().numel() <= 4
    assert qmath.relative_error(x, qmath.quantize_dequantize(x, 16)) < 1e-4


def test_widgets_and_fake_quantize_reject_bad_bits():
    m = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="from 2 to 16"):
        qmath.fake_quantize_weights(m, 1, per_channel=True)
    with pytest.raises(ValueError, match="from 2 to 16"):
        qmath.weight_bytes(m, 32 + 1, per_channel=False)


def test_integer_ranges():
    assert qmath.int_range(8, symmetric=False) == (0, 255)
    assert qmath.int_range(8, symmetric=True) == (-127, 127)
    assert qmath.int_range(4, symmetric=True) == (-7, 7)


def test_zero_is_exactly_representable_asymmetric_and_symmetric():
    x = torch.tensor([-0.37, 0.0, 0.2, 1.0])
    for sym in (False, True):
        assert qmath.quantize_dequantize(x, 4, symmetric=sym)[1] == 0


def test_asymmetric_error_is_at_most_half_a_step():
    x = torch.randn(1000)
    scale, zp = qmath.qparams(x, 8)
    assert zp == zp.round() and 0 <= zp <= 255
    err = (qmath.quantize_dequantize(x, 8) - x).abs().max()
    assert err <= scale / 2 * (1 + 1e-4)


def test_per_channel_scales_follow_the_axis():
    w = torch.randn(4, 3, 3, 3)
    w[1] *= 1e-3
    scale, zp = qmath.qparams(w, 8, axis=0, symmetric=True)
    assert scale.shape == (4, 1, 1, 1) and torch.all(zp == 0)
    per_t = qmath.relative_error(w[1], qmath.quantize_dequantize(w, 4, symmetric=True)[1])
    per_c = qmath.relative_error(w[1], qmath.quantize_dequantize(w, 4, axis=0,
                                                                      symmetric=True)[1])
    assert per_c < 0.2 < per_t   # per tensor, the small filter drowns in the big one's steps


def test_an_all_zero_tensor_stays_zero():
    for sym in (False, True):
        assert torch.equal(qmath.quantize_dequantize(torch.zeros(2, 3), 8, axis=0,
                                                        symmetric=sym), torch.zeros(2, 3))


def test_error_shrinks_with_bits():
    x = torch.randn(2000)
    errs = [qmath.relative_error(x, qmath.quantize_dequantize(x, b)) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errs, errs[1:]))


# ---- fake-quantized weights and the slider ------------------------------------------------

def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def test_fake_quantize_weights_does_not_compound_and_levels_match_bits():
    m = tiny_cnn()
    source = {k: w.detach().clone() for k, w in qmath.quantizable_weights(m).items()}
    qmath.fake_quantize_weights(m, 2, per_channel=False, source=source)
    assert m[0].weight.unique().numel() <= 3       # symmetric 2-bit: -1, 0, +1 steps
    qmath.fake_quantize_weights(m, 8, per_channel=True, source=source)
    assert qmath.relative_error(source["0.weight"], m[0].weight) < 0.01


def test_weight_bytes_counts_bits_and_scales():
    m = tiny_cnn()
    conv, lin = 4 * 9, 10 * 4
    other = 4 + 4 * 4 + 10       # conv bias, bn weight/bias/mean/var, linear bias (fp32)
    assert qmath.weight_bytes(m, 8, per_channel=False) == conv + lin + 4 * (2 + other)
    assert qmath.weight_bytes(m, 4, per_channel=True) == (
        (conv + lin) * 4 + 32 * (4 + 10) + 32 * other + 7) // 8


def test_bits_panel_moves_and_times_its_responses():
    m = tiny_cnn()
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    panel = widgets.bits_panel(m, x, y, bits=8)
    assert panel.result["bits"] == 8 and panel.result["images"] == 20
    r8 = panel.result
    r2 = panel.set(bits=2, granularity="per-tensor")
    assert r2["bits"] == 2 and r2["granularity"] == "per-tensor"
    assert r2["bytes"] < r8["bytes"] and 0 <= r2["accuracy"] <= 1
    moves = panel.sweep("bits", [8, 6, 4, 3])
    stats = panel.timing(last=len(moves))
    assert [r["bits"] for r in moves] == [8, 6, 4, 3]
    assert stats["moves"] == 4 and stats["median_s"] >= 0
    assert panel.history[-1]["bits"] == 3
    # the model handed in is untouched
    assert torch.equal(m[0].weight, tiny_cnn()[0].weight)


def test_bits_panel_answers_what_a_fake_quantized_copy_would():
    import copy

    from edgelab import evaluation
    m = tiny_cnn()
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    panel = widgets.bits_panel(m, x, y, bits=3, per_channel=False)
    copy_3bit = qmath.fake_quantize_weights(copy.deepcopy(m), 3, per_channel=False)
    assert panel.result["accuracy"] == evaluation.accuracy_on(copy_3bit, x, y)
    fake = {k: qmath.quantize_dequantize(w.detach(), 3, symmetric=True)
            for k, w in qmath.quantizable_weights(m).items()}
    with torch.no_grad():
        assert torch.allclose(qmath.with_weights(m, fake)(x), copy_3bit(x), atol=1e-6)


# ---- the exercise checker -----------------------------------------------------------------

def reference(x, bits, axis=None):
    return qmath.quantize_dequantize(x, bits, axis=axis)


def _wrong(*, zp_round=True, rounding=torch.round, clamp=True, steps=lambda b: 2 ** b - 1,
           axis_override="keep", guard=True, inplace=False):
    """A learner's attempt with one typical mistake switched on."""
    def fn(x, bits, axis=None):
        if axis_override != "keep":
            axis = axis_override
        dims = tuple(range(x.dim())) if axis is None else tuple(
            d for d in range(x.dim()) if d != axis)
        lo = x.amin(dim=dims, keepdim=True).clamp(max=0)
        hi = x.amax(dim=dims, keepdim=True).clamp(min=0)
        scale = (hi - lo) / steps(bits)
        if guard:
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zp = -lo / scale
        if zp_round is True:
            zp = torch.round(zp)
        q = rounding(x / scale + zp) if zp_round == "late" else rounding(x / scale) + zp
        if clamp:
            q = q.clamp(0, 2 ** bits - 1)
        if inplace:
            x.copy_((q - zp) * scale)
            return x
        return (q - zp) * scale
    return fn


def test_the_checker_passes_the_reference_and_a_correct_attempt(capsys):
    assert check.quantize_dequantize(reference) is reference
    assert "all 10 checks passed" in capsys.readouterr().out
    attempt = _wrong()     # with no mistake switched on it is a correct solution
    assert check.quantize_dequantize(attempt) is attempt


def test_a_stub_is_not_attempted_and_the_reference_takes_over(capsys):
    def stub(x, bits, axis=None):
        raise NotImplementedError
    fn = check.quantize_dequantize(stub)
    assert fn is not stub
    assert "not attempted" in capsys.readouterr().out
    assert torch.equal(fn(torch.tensor([0.0, 1.0]), 8), reference(torch.tensor([0.0, 1.0]), 8))


@pytest.mark.parametrize("mistake, expect", [
    (dict(zp_round=False), "round the zero point"),
    (dict(zp_round="late"), "round the zero point"),
    (dict(rounding=torch.floor), "round to the nearest"),
    (dict(rounding=torch.trunc), "round to the nearest"),
    (dict(clamp=False), "clamp"),
    (dict(steps=lambda b: 2 ** b), "half a step"),
    (dict(guard=False), "scale of 0"),
    (dict(axis_override=None), "own min, max, scale"),
    (dict(axis_override=0), "per column"),
    (dict(inplace=True), "modified in place"),
])
def test_the_checker_rejects_typical_mistakes_and_says_what_is_off(mistake, expect, capsys):
    wrong = _wrong(**mistake)
    fn = check.quantize_dequantize(wrong)
    out = capsys.readouterr().out
    assert fn is not wrong, f"{mistake} was accepted"
    assert "checks failed" in out and expect in out, out


def test_the_checker_rejects_symmetric_and_integer_answers(capsys):
    def symmetric(x, bits, axis=None):
        return qmath.quantize_dequantize(x, bits, axis=axis, symmetric=True)

    def codes(x, bits, axis=None):
        scale, zp = qmath.qparams(x, bits, axis)
        return qmath.quantize(x, scale, zp, 0, 2 ** bits - 1).to(torch.int32)

    def per_channel_always(x, bits, axis=None):
        return qmath.quantize_dequantize(x, bits, axis=0 if axis is None else axis)

    for wrong in (symmetric, codes, per_channel_always):
        assert check.quantize_dequantize(wrong) is not wrong, wrong.__name__
    out = capsys.readouterr().out
    assert "dequantize back to floats" in out and "one scale covers the whole tensor" in out


# ---- PyTorch flows on a tiny model, errors ------------------------------------------------

def test_zero_calibration_images_is_a_clear_error():
    m = tiny_cnn()
    for images in (torch.empty(0, 1, 28, 28), None):
        with pytest.raises(ValueError, match="calibration images"):
            quantize.calibrate(m, images)
        with pytest.raises(ValueError, match="calibration images"):
            runtime.ort_static("unused.onnx", "unused-int8.onnx", images)


def test_dynamic_quantization_skips_convolutions():
    m = tiny_cnn()
    d = quantize.dynamic(m)
    kinds = quantize.module_types(d)
    assert kinds == {"torch.ao.nn.quantized.dynamic.modules.linear.Linear": 1,
                     "torch.nn.modules.conv.Conv2d": 1}
    assert quantize.module_types(m)["torch.nn.modules.linear.Linear"] == 1


def test_missing_quantized_engine_says_what_to_do(monkeypatch):
    monkeypatch.setattr(quantize, "_supported_engines", lambda: ["none"])
    with pytest.raises(quantize.NoQuantizedEngine, match="ONNX Runtime"):
        quantize.quantized_engine()


def test_quantizable_teacher_keeps_the_weights_and_the_outputs():
    from edgelab import models
    t = models.teacher().eval()
    q = quantize.quantizable_teacher(t)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(t(x), q(x), atol=1e-5)


def test_onnx_export_and_ort_static_on_a_tiny_model(tmp_path):
    m = tiny_cnn()
    fp32 = runtime.export_onnx(m, tmp_path / "tiny.onnx", torch.zeros(2, 1, 28, 28))
    sess = runtime.session(fp32, threads=1)
    x = torch.randn(5, 1, 28, 28)
    out = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), m(x), atol=1e-4)
    int8 = runtime.ort_static(fp32, tmp_path / "tiny-int8.onnx", torch.randn(16, 1, 28, 28))
    out8 = runtime.session(int8, threads=1).run(None, {"image": x.numpy()})[0]
    assert out8.shape == (5, 10)
    assert not list(tmp_path.glob(".*"))       # no temporary files left behind


def test_eager_qconfig_refuses_weights_wider_than_int8():
    with pytest.raises(ValueError, match="at most 8-bit"):
        quantize.eager_qconfig(per_channel=True, weight_bits=12)
    with pytest.raises(ValueError, match="from 2 to 16"):
        quantize.eager_qconfig(per_channel=True, weight_bits=1)


def test_fixed_batches_feeds_only_batch_1_and_full_chunks():
    seen = []

    def model(x):
        seen.append(len(x))
        return x.flatten(1)[:, :3] * 2

    wrapped = runtime.FixedBatches(model, batch=4)
    x = torch.randn(10, 1, 28, 28)
    out = wrapped(x)
    assert torch.allclose(out, x.flatten(1)[:, :3] * 2)
    assert wrapped(x[:1]).shape == (1, 3)
    assert set(seen) == {1, 4}
    assert wrapped.eval() is wrapped and not wrapped.training


def test_int8_static_bars_pick_the_best_model_per_runtime():
    from edgelab import targets

    def rec(name, runtime, acc, size, b64, tags):
        return {"name": name, "runtime": runtime, "accuracy": acc, "bytes": size,
                "latency_b64_ms": b64, "tags": tags}
    records = [
        rec("teacher", "torch", 0.937, 44_000_000, 100.0, ["baseline", "fp32"]),
        rec("ptq-w4", "torch", 0.900, 11_000_000, 20.0, ["int8", "static"]),     # too inaccurate
        rec("ptq", "torch", 0.935, 11_000_000, 40.0, ["int8", "static"]),
        rec("dynamic", "torch", 0.937, 44_000_000, 100.0, ["int8", "dynamic"]),  # not static
        rec("teacher", "onnxruntime", 0.937, 44_000_000, 80.0, ["baseline", "fp32", "onnx"]),
        rec("ort-s8", "onnxruntime", 0.936, 11_000_000, 90.0, ["int8", "static", "onnx"]),
    ]
    bars = targets.int8_static_bars(records)
    assert bars["torch"]["name"] == "ptq" and bars["torch"]["met"]
    assert bars["torch"]["faster_b64"] == pytest.approx(2.5)
    assert bars["onnxruntime"]["name"] == "ort-s8" and not bars["onnxruntime"]["met"]
    res = {"run": {"smoke": False}, "records": [dict(r, notebook="02_quantization_flows") for r in records]}
    int8_targets = [fn for desc, fn in targets.TARGETS if desc.startswith("int8 static")]
    assert [fn(res)[1] for fn in int8_targets] == [True, False]
    assert all(fn(dict(res, run={"smoke": True})) is None for _, fn in targets.TARGETS[-2:])


def test_ort_static_calibrates_over_several_batches(tmp_path):
    fp32 = runtime.export_onnx(tiny_cnn(), tmp_path / "tiny.onnx", torch.zeros(2, 1, 28, 28))
    out = runtime.ort_static(fp32, tmp_path / "tiny-int8.onnx", torch.randn(40, 1, 28, 28),
                              batch_size=8)
    assert out.is_file()


@pytest.mark.parametrize("calibration", ["percentile", "entropy"])
def test_the_histogram_calibrators_take_a_count_that_is_not_a_multiple_of_the_batch(tmp_path,
                                                                                   calibration):
    # ONNX Runtime stacks each tensor's batches into one array: a short last batch used to fail
    fp32 = runtime.export_onnx(tiny_cnn(), tmp_path / "tiny.onnx", torch.zeros(2, 1, 28, 28))
    out = runtime.ort_static(fp32, tmp_path / "tiny-int8.onnx", torch.randn(20, 1, 28, 28),
                             batch_size=16, calibration=calibration)
    assert out.is_file()


@pytest.mark.heavy   # a PT2E export and an Inductor compile: 4-11 s of `make check`
def test_release_compiled_frees_a_deleted_pt2e_graph():
    # torchao and torch.export keep exported graphs in process-wide caches; without clearing
    # them each PT2E round leaks its graph (tens of MB for the teacher) until the kernel dies.
    import gc
    import weakref

    from edgelab import models
    graph = quantize.pt2e_static(models.teacher().eval(), torch.randn(4, 1, 28, 28))
    alive = weakref.ref(graph)
    del graph
    gc.collect()
    assert alive() is not None, "a library cache no longer holds the graph: this test is stale"
    runtime.release_compiled()
    assert alive() is None, "the PT2E graph is still referenced after release_compiled()"


def test_every_named_export_cache_exists_in_the_pinned_libraries():
    import importlib
    for module, name in runtime._GRAPH_CACHES:
        assert hasattr(getattr(importlib.import_module(module), name), "cache_clear"), (module, name)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_value_is_an_error_not_a_tensor_of_nans(bad):
    x = torch.tensor([0.5, -1.0, bad, 2.0])
    with pytest.raises(ValueError, match="NaN or Inf: 1 of its 4 values"):
        qmath.quantize_dequantize(x, 8)
    with pytest.raises(ValueError, match="NaN or Inf"):
        qmath.qparams(x.view(2, 2), 8, axis=0)



def test_mixed_bits_gives_the_sensitive_layer_more_bits_within_the_budget():
    sizes = {"a": 100, "b": 100, "c": 100}
    drops = {"a": 0.5, "b": 0.01, "c": 0.0}
    bits = qmath.mixed_bits(drops, sizes, budget_bits=4 * 300)
    assert sum(sizes[k] * b for k, b in bits.items()) <= 4 * 300
    assert bits["a"] > 4 > bits["c"] and bits["a"] >= bits["b"] >= bits["c"]
    with pytest.raises(ValueError, match="below 2 bits a weight"):
        qmath.mixed_bits(drops, sizes, budget_bits=100)


def test_weight_bytes_takes_a_width_per_layer():
    m = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    uniform = qmath.weight_bytes(m, 4, per_channel=True)
    assert qmath.weight_bytes(m, {"0.weight": 4, "2.weight": 4}, per_channel=True) == uniform
    assert qmath.weight_bytes(m, {"0.weight": 8, "2.weight": 2}, per_channel=True) < uniform
    with pytest.raises(ValueError, match="must name exactly"):
        qmath.weight_bytes(m, {"0.weight": 8}, per_channel=True)


def test_with_weights_names_a_tensor_the_model_does_not_have():
    with pytest.raises(KeyError, match=r"no tensors named \['3.weight'\]"):
        qmath.with_weights(nn.Sequential(nn.Linear(2, 2)), {"3.weight": torch.zeros(2, 2)})


def test_mse_clip_is_never_worse_than_the_full_range_and_clips_bell_shaped_weights():
    torch.manual_seed(0)
    w = torch.randn(4, 512)              # bell-shaped: at 4 bits the rare tails are worth clipping
    t = qmath.mse_clip(w, bits=4, axis=0)
    amax = w.abs().amax(1)
    assert t.shape == (4,) and (t < 0.9 * amax).all()

    def err(th):
        s = (th / 7)[:, None]
        return ((w / s).round().clamp(-7, 7) * s - w).pow(2).sum(1)
    assert (err(t) <= err(amax) + 1e-6).all()


def test_fold_batchnorm_keeps_the_function_and_removes_every_batchnorm():
    from edgelab import models
    m = models.student(widths=(8, 16), blocks=1).eval()
    with torch.no_grad():
        for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1); bn.running_var.uniform_(0.5, 2); bn.weight.uniform_(0.5, 2)
    f = qmath.fold_batchnorm(m)
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(f(x), m(x), atol=1e-5)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in f.modules())


def test_mse_weight_range_is_only_for_per_channel_post_training():
    with pytest.raises(ValueError, match="per-channel"):
        quantize.eager_qconfig(per_channel=False, weight_range="mse")
    with pytest.raises(ValueError, match="'minmax' or 'mse'"):
        quantize.eager_qconfig(per_channel=True, weight_range="percentile")


def test_cpu_isa_reports_the_machine_and_torch_dispatch_level():
    isa = runtime.cpu_isa()
    assert isa["machine"] and isa["torch_capability"] and isinstance(isa["vnni"], bool)
    assert set(isa["flags"]) <= {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                 "amx_int8", "asimddp"}


def test_weight_fake_quant_trains_through_the_grid_and_bakes_onto_it():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    quantize.weight_fake_quant(m, bits=8)
    out = m(torch.randn(2, 1, 28, 28)).sum()
    out.backward()
    original = m[0].parametrizations.weight.original
    assert original.grad is not None and original.grad.abs().sum() > 0   # straight through
    quantize.bake_weights(m)
    for layer in (m[0], m[3]):
        w = layer.weight.detach()
        scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / 127
        assert torch.allclose(w / scale, (w / scale).round(), atol=1e-4)
        assert not hasattr(layer, "parametrizations")


def test_weight_fake_quant_needs_a_layer_to_quantize():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        quantize.weight_fake_quant(nn.Sequential(nn.ReLU()))


def test_ort_static_names_the_calibrations_it_knows(tmp_path):
    with pytest.raises(ValueError, match="minmax"):
        runtime.ort_static(tmp_path / "x.onnx", tmp_path / "y.onnx", torch.zeros(4, 1, 28, 28),
                           calibration="kl")


def test_eager_convert_consumes_the_prepared_model_and_its_gradients():
    prepared = quantize.qat_prepare(models.teacher(), per_channel=True)
    prepared.train()
    prepared(torch.randn(2, 1, 28, 28)).sum().backward()
    q = quantize.eager_convert(prepared)
    assert q is prepared   # in place: no second float copy at the memory peak
    assert all(p.grad is None for p in q.parameters())
    assert not any(type(m) is nn.Conv2d for m in q.modules())


@pytest.mark.parametrize("isa, saturates", [
    ({"machine": "x86_64", "vnni": False, "flags": ["avx2"]}, True),
    ({"machine": "x86_64", "vnni": True, "flags": ["avx2", "avx512f", "avx512_vnni"]}, False),
    ({"machine": "x86_64", "vnni": False, "flags": ["avx2", "avx_vnni"]}, False),
    ({"machine": "aarch64", "vnni": False, "flags": []}, False),
])
def test_u8s8_saturates_only_on_x86_without_vnni(isa, saturates):
    assert runtime.u8s8_saturates(isa) is saturates


def _int8_weights(path):
    import onnx
    from onnx import numpy_helper
    return [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]


def test_ort_static_keeps_7_bit_weights_where_u8s8_could_saturate(tmp_path, monkeypatch):
    m = tiny_cnn()
    fp32 = runtime.export_onnx(m, tmp_path / "tiny.onnx", torch.zeros(2, 1, 28, 28))
    images = torch.randn(16, 1, 28, 28)
    for saturates in (True, False):
        monkeypatch.setattr(runtime, "u8s8_saturates", lambda isa=None, s=saturates: s)
        out = runtime.ort_static(fp32, tmp_path / f"int8-{saturates}.onnx", images)
        peak = max(int(abs(w.astype(int)).max()) for w in _int8_weights(out))
        assert (peak <= 64) if saturates else (peak == 127), (saturates, peak)
    # int8 activations (S8S8) never take the reduced range by default, even where U8S8 saturates
    monkeypatch.setattr(runtime, "u8s8_saturates", lambda isa=None: True)
    out = runtime.ort_static(fp32, tmp_path / "s8s8.onnx", images, activations="int8")
    assert max(int(abs(w.astype(int)).max()) for w in _int8_weights(out)) == 127
