"""The one quantization verb: each config names one flow, bad configs say what is valid, and the
flows that apply to any model run on every test architecture of test_any_model."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from edgelab import runtime
from edgelab.qconfig import QuantConfig, granularity, quantize
from test_any_model import ARCHS


def test_granularity_has_one_name_for_each_of_the_three_old_spellings():
    assert {granularity(v) for v in (True, "per-channel", 0)} == {"per-channel"}
    assert {granularity(v) for v in (False, "per-tensor", None)} == {"per-tensor"}
    with pytest.raises(ValueError, match="granularity is one of"):
        granularity("per-row")
    assert QuantConfig(granularity=True).granularity == "per-channel"


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "tflite"}, "backend must be one of"),
    ({"bits": 4}, "stores int8 weights only"),
    ({"backend": "eager", "bits": 9}, "at most 8-bit weights"),
    ({"backend": "eager", "bits": 1.5}, "bits must be an integer"),
    ({"calibration": "kl"}, "calibration must be one of"),
    ({"backend": "pt2e", "calibration": "entropy"}, "ONNX Runtime's"),
    ({"backend": "pt2e", "granularity": "per-tensor"}, "per-channel weights"),
    ({"backend": "dynamic"}, "one scale per tensor"),
])
def test_a_config_that_cannot_run_says_what_is_valid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_the_verb_refuses_what_would_come_back_unchanged_or_uncalibrated():
    convs = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="Linear layers only"):
        quantize(convs, QuantConfig("dynamic", "per-tensor"))
    with pytest.raises(ValueError, match="calibration images"):
        quantize(convs, QuantConfig("pt2e"))
    with pytest.raises(TypeError, match="QuantConfig"):
        quantize(convs, {"backend": "pt2e"})


def test_the_eager_flow_names_the_models_it_has_the_edit_for():
    torch.manual_seed(0)
    net = ARCHS["no-batchnorm-1x28x28"][0]().eval()
    with pytest.raises(ValueError, match="workbook's ResNet18 only"):
        quantize(net, QuantConfig("eager"), torch.randn(8, 1, 28, 28))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.heavy) if n.startswith("mobilenet")
                                  else n for n in sorted(ARCHS)])   # MobileNetV3: `make test`
def test_pt2e_and_onnxruntime_quantize_every_test_architecture(name, tmp_path):
    build, shape = ARCHS[name]
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(16, *shape)
    with torch.no_grad():
        want = model(images)
    got_pt2e = quantize(model, QuantConfig("pt2e"), images)(images).detach()
    path = quantize(model, QuantConfig("onnxruntime"), images, out=tmp_path / "m-int8.onnx")
    got_ort = torch.from_numpy(np.asarray(runtime.session(path).run(None, {"image": images.numpy()})[0]))
    for got in (got_pt2e, got_ort):
        assert got.shape == want.shape
        # int8 output: close to fp32 on the scale of the logits, not equal
        assert (got - want).abs().max() <= 0.25 * want.abs().max() + 1e-3
