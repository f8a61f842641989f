import pytest
import torch
import torch.nn as nn

from edgelab import calibration, runtime


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10)).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 12, 12, generator=g)
    x[0, 0, 0, 0] = 40.0          # one outlier pixel: what clipping calibrators are for
    return x


def test_ort_calibrated_writes_once_then_reuses_the_cached_file(tmp_path, images, monkeypatch):
    m = tiny_cnn()
    first = calibration.ort_calibrated(m, images, "minmax", name="t/tiny", cache_dir=tmp_path)
    assert first.is_file() and first.parent == tmp_path / "t"

    def fail(*a, **k):
        raise AssertionError("quantized again despite the cached file")
    monkeypatch.setattr(runtime, "ort_static", fail)
    monkeypatch.setattr(runtime, "export_onnx", fail)
    assert calibration.ort_calibrated(m, images, "minmax", name="t/tiny", cache_dir=tmp_path) == first


def test_ort_calibrated_keys_on_method_images_and_weights(tmp_path, images):
    m = tiny_cnn()
    base = calibration.ort_calibrated(m, images, "minmax", name="tiny", cache_dir=tmp_path)
    other_images = calibration.ort_calibrated(m, images.flip(0), "minmax", name="tiny",
                                              cache_dir=tmp_path)
    other_method = calibration.ort_calibrated(m, images, "percentile", name="tiny", cache_dir=tmp_path)
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] += 1
    other_weights = calibration.ort_calibrated(m, images, "minmax", name="tiny", cache_dir=tmp_path)
    assert len({base, other_images, other_method, other_weights}) == 4


def test_ort_calibrated_names_the_valid_methods(tmp_path, images):
    with pytest.raises(ValueError, match="minmax.*percentile.*entropy"):
        calibration.ort_calibrated(tiny_cnn(), images, "kl", name="tiny", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="calibration images"):
        calibration.ort_calibrated(tiny_cnn(), images[:0], name="tiny", cache_dir=tmp_path)


def test_percentile_clips_an_outlier_that_minmax_covers(tmp_path):
    # 99.999th percentile: one value in 147k lies beyond it
    images = torch.randn(16, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    images[0, 0, 0, 0] = 40.0
    m = tiny_cnn()
    ranges = {meth: calibration.activation_ranges(
        calibration.ort_calibrated(m, images, meth, name="tiny", cache_dir=tmp_path))
        for meth in ("minmax", "percentile")}
    lo, hi = ranges["minmax"]["image"]
    assert hi == pytest.approx(40.0, rel=0.01) and lo <= 0 <= hi
    assert ranges["percentile"]["image"][1] < 0.5 * hi
    for name, (lo, hi) in ranges["minmax"].items():   # uint8 codes: 0 is always representable
        assert lo <= 0 <= hi, name


def test_entropy_at_ort_defaults_reproduces_the_minmax_ranges(tmp_path, images):
    # num_bins == num_quantized_bins == 128: get_entropy_threshold has one candidate, the whole
    # histogram; a new ONNX Runtime that changes this should make the notebook's prose change too
    m = tiny_cnn()
    mm, ent = (calibration.activation_ranges(
        calibration.ort_calibrated(m, images, meth, name="tiny", cache_dir=tmp_path))
        for meth in ("minmax", "entropy"))
    assert mm.keys() == ent.keys()
    for k in mm:
        assert ent[k] == pytest.approx(mm[k], rel=1e-3, abs=1e-6), k


def test_activation_ranges_refuses_a_float_model(tmp_path):
    fp32 = calibration.fp32_onnx(tiny_cnn(), torch.zeros(2, 1, 12, 12), "tiny", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not a static QDQ model"):
        calibration.activation_ranges(fp32)


def _prepared():
    from torch.ao.quantization import QuantStub, get_default_qconfig, prepare

    m = nn.Sequential(QuantStub(), nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    with runtime.quiet():
        m.qconfig = get_default_qconfig("x86")
        return prepare(m)


def test_use_activation_observer_swaps_only_the_observer():
    prepared = _prepared()
    before = {n: (o.dtype, o.quant_min, o.quant_max) for n, o in prepared.named_modules()
              if type(o).__name__ == "HistogramObserver"}
    assert before
    with runtime.quiet():
        calibration.use_activation_observer(prepared, "minmax")
    after = {n: (o.dtype, o.quant_min, o.quant_max) for n, o in prepared.named_modules()
             if type(o).__name__ == "MinMaxObserver"}
    assert after == before        # same places, dtype and codes (reduce_range not applied twice)
    prepared(torch.randn(4, 1, 8, 8))
    assert all(float(o.max_val) > 0 for n, o in prepared.named_modules() if n in after)


def test_use_activation_observer_names_what_is_wrong():
    with pytest.raises(ValueError, match="minmax.*histogram"):
        calibration.use_activation_observer(_prepared(), "percentile")
    with pytest.raises(ValueError, match="no activation observer"):
        calibration.use_activation_observer(tiny_cnn(), "minmax")


def test_keys_follow_content_not_identity():
    a, b = tiny_cnn(), tiny_cnn()
    assert calibration.model_key(a) == calibration.model_key(b)
    with torch.no_grad():
        b[0].bias[0] += 1e-3
    assert calibration.model_key(a) != calibration.model_key(b)
    x = torch.randn(3, 1, 4, 4)
    assert calibration.images_key(x) == calibration.images_key(x.clone())
    assert calibration.images_key(x) != calibration.images_key(x[:2])


def test_histogram_calibrators_take_a_count_that_is_no_multiple_of_the_batch(tmp_path, images):
    # ONNX Runtime's Percentile/Entropy stack every batch of a tensor into one array: a short
    # last batch (23 = 16 + 7) would fail inside numpy
    path = calibration.ort_calibrated(tiny_cnn(), images[:23], "entropy", name="tiny",
                                      cache_dir=tmp_path)
    assert path.is_file()
