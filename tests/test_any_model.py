"""Every public verb, export and the Pi bundle included, on classifiers the workbook was never
tuned for: depthwise convolutions, no batch norm, a Linear-heavy head, torchvision's MobileNetV3
on 3x32x32 colour images. Shapes come from the example input; nothing may assume ResNet18,
28x28, one channel or a layer named ``fc``."""
import pytest
import torch
import torch.nn as nn
from torchvision.models import mobilenet_v3_small

from edgelab import counts, deploy, evaluation, lowrank, measure, prune, quantize, runtime, sensitivity
from edgelab.pi import bundle as pi_bundle


def depthwise_net():
    """MobileNet-style: a depthwise 3x3 (groups = channels) and a pointwise 1x1, ReLU6."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def no_bn_net():
    """Plain convolutions with biases, max pooling, no normalisation at all."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


class LinearHead(nn.Module):
    """One strided conv, then most of the parameters in a three-layer MLP; the classifier is
    called ``out``, not ``fc``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU())
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(8 * 14 * 14, 128), nn.ReLU(),
                                 nn.Linear(128, 64), nn.ReLU())
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        return self.out(self.mlp(self.features(x)))


ARCHS = {
    "depthwise-3x32x32": (depthwise_net, (3, 32, 32)),
    "no-batchnorm-1x28x28": (no_bn_net, (1, 28, 28)),
    "linear-head-1x28x28": (LinearHead, (1, 28, 28)),
    "mobilenet_v3_small-3x32x32": (lambda: mobilenet_v3_small(num_classes=10), (3, 32, 32)),
}


# MobileNetV3 (15 s a verb on 2 cores) runs in `make test`; `make check` keeps the three small ones,
# which still cover depthwise convs, no batch norm, a Linear head and a 3x32x32 input.
@pytest.fixture(params=[pytest.param(n, marks=pytest.mark.heavy) if n.startswith("mobilenet") else n
                        for n in sorted(ARCHS)], scope="module")
def arch(request):
    build, shape = ARCHS[request.param]
    torch.manual_seed(0)
    model = build().eval()
    # a few steps of training so that BN statistics and weights are not at their init values
    x = torch.randn(64, *shape)
    y = torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return request.param, model.eval(), x, y


def test_measure_reads_shapes_and_data_from_the_example(arch):
    name, model, x, y = arch
    record = measure.measure(model, name, images=x, labels=y, batch_sizes=(1, 8),
                             min_run_time=0.01)
    assert record["test_images"] == len(y) and 0 <= record["accuracy"] <= 1
    assert record["macs"] == counts.count_macs(model, x) > 0
    assert record["latency_b1_ms"] > 0 and record["latency_b8_ms"] > 0


def test_unstructured_pruning_and_the_sensitivity_scan_work(arch):
    name, model, x, y = arch
    pruned = prune.unstructured(model, 0.5)
    assert prune.sparsity(pruned) == pytest.approx(0.5, abs=1e-3)
    scan = sensitivity.sensitivity_scan(model, [0.5], x, y, progress=False)
    assert set(scan) == set(prune.prunable_layers(model))


def test_structured_pruning_shrinks_every_layer_and_keeps_the_classes(arch):
    name, model, x, y = arch
    p = prune.structured(model, 0.5, x[:1])
    assert p(x).shape == (len(x), 10)
    assert counts.count_params(p) < counts.count_params(model)
    classifier = [m for m in p.modules() if isinstance(m, nn.Linear)][-1]
    assert classifier.out_features == 10


def test_pt2e_static_quantizes_the_model(arch):
    name, model, x, y = arch
    graph = quantize.pt2e_static(model, x[:32])
    ops = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert any("quantize_per_tensor" in o for o in ops)
    with torch.no_grad():
        agree = (graph(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree > 0.8, f"int8 {name} agrees with fp32 on {agree:.0%} of predictions"
    runtime.release_compiled()


def test_onnx_export_and_ort_int8_match_the_model(arch, tmp_path):
    name, model, x, y = arch
    fp32 = deploy.export(model, tmp_path / f"{name}.onnx", x[:2])
    check = deploy.check_export(model, fp32, x[:16])
    assert check["same_top1"] == 1.0 and check["max_abs_diff"] <= 1e-4
    int8 = runtime.ort_static(fp32, tmp_path / f"{name}-int8.onnx", x[:32])
    logits = evaluation.predict_logits(runtime.session(int8), x)
    assert logits.shape == (len(x), 10)


@pytest.mark.heavy   # predict.py in a subprocess per model; tests/test_pi_bundle.py in `make check`
def test_the_pi_bundle_reads_its_input_from_the_example_and_predicts_like_the_model(arch,
                                                                                    tmp_path):
    import json

    import numpy as np

    name, model, x, y = arch
    bundle = pi_bundle.build(model, tmp_path / "pi_bundle", x[:2], mean=0.5, std=0.25)
    spec = pi_bundle.read_meta(bundle)["input"]
    assert [spec["channels"], spec["height"], spec["width"]] == list(x.shape[1:])
    pixels = pi_bundle.sample_pixels(spec, 6)
    files = pi_bundle.write_pngs(tmp_path / "images", pixels)
    run = pi_bundle.run_predict(bundle, ["--json", "--threads", "1", *map(str, files)])
    assert run.returncode == 0 and run.stderr == "", run.stderr
    logits = np.array([p["logits"] for p in json.loads(run.stdout)["predictions"]])
    chw = pixels if pixels.ndim == 4 else pixels[..., None]
    images = torch.from_numpy(((chw / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2).astype(np.float32))
    with torch.inference_mode():
        expected = model(images).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_lowrank_factors_convolutions_and_linear_layers(arch):
    name, model, x, y = arch
    kinds = (nn.Conv2d, nn.Linear)
    factored = lowrank.factorize(model, energy=0.5, kinds=kinds)
    assert lowrank.ranks_of(factored), f"nothing of {name} was factored"
    assert factored(x).shape == (len(x), 10)
    assert counts.count_params(factored) < counts.count_params(model)


def test_a_plan_that_factors_nothing_is_an_error_not_an_unchanged_copy():
    with pytest.raises(ValueError, match="no layer of Sequential can be factored at energy 1.0"):
        lowrank.factorize(no_bn_net(), energy=1.0)


def test_weight_sharing_is_refused_by_pt2e_with_the_layer_named():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(ValueError, match=r"layer 'fc' \(Linear\) holds weights and is called 2"):
        quantize.unshare_modules(Shared(), torch.zeros(1, 8))


def test_weight_only_qat_trains_any_model_through_the_one_loop_onto_the_int8_grid(arch):
    import copy

    from edgelab import loop

    name, model, x, y = arch
    model = copy.deepcopy(model)
    quantize.weight_fake_quant(model, bits=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    state = loop.run(model.train(), [(x, y)], opt, steps=2)
    assert len(state.losses) == 2 and all(torch.isfinite(torch.tensor(state.losses)))
    quantize.bake_weights(model.eval())
    for layer, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().flatten(1)
            scale = w.abs().amax(1, keepdim=True) / 127
            codes = w / torch.where(scale > 0, scale, 1)
            assert torch.allclose(codes, codes.round(), atol=1e-3), f"{name}: {layer} is off the grid"
