"""The Raspberry Pi bundle (edgelab.pi.bundle) and its predict.py, run here with this machine's
Python: every file there, labels.json carrying the model's input spec, one preprocessing path
for any input size and channel count, clear errors for bad input."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from edgelab import data, deploy, evaluation, pi, runtime
from edgelab.pi import bundle as pib


def tiny_cnn(channels=1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return deploy.export(tiny_cnn(), tmp_path_factory.mktemp("onnx") / "tiny.onnx",
                         torch.zeros(2, 1, 28, 28))


@pytest.fixture(scope="module")
def bundle(tiny_onnx, tmp_path_factory):
    return pib.build(tiny_onnx, tmp_path_factory.mktemp("b") / "pi_bundle", name="tiny",
                     accuracy=0.1, test_images=100, macs=1_000_000)


COLOUR_MEAN, COLOUR_STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(scope="module")
def colour_bundle(tmp_path_factory):
    """A 3x32x32 RGB model, built from the nn.Module and an example batch."""
    model = tiny_cnn(channels=3, seed=2)
    out = pib.build(model, tmp_path_factory.mktemp("c") / "pi_bundle", torch.zeros(2, 3, 32, 32),
                    mean=COLOUR_MEAN, std=COLOUR_STD, labels=[f"class {i}" for i in range(10)],
                    dataset="a colour data set", name="colour")
    return model, out


# ---- the bundle ---------------------------------------------------------------------------

def test_bundle_has_every_file_and_check_names_a_missing_one(bundle, tmp_path):
    sizes = pib.check(bundle)
    assert set(sizes) == set(pib.BUNDLE_FILES) and all(n > 0 for n in sizes.values())
    assert (bundle / "predict.py").read_text() == (pi.TEMPLATE / "predict.py").read_text()
    readme = (bundle / "README.md").read_text()
    assert "{{" not in readme and "10.00 %" in readme and "not measured here" in readme
    assert "28×28 grayscale" in readme and "garment" in readme
    ratio = pib.resnet18_224_macs() / 1_000_000
    assert f"does 1,000,000 multiply-adds per image, {ratio:.1f} times fewer" in readme
    assert 1.7e9 < pib.resnet18_224_macs() < 1.9e9   # torchvision's docs: 1.81 GFLOPS
    for name in pib.BUNDLE_FILES:
        broken = tmp_path / name.replace(".", "_")
        shutil.copytree(bundle, broken)
        (broken / name).unlink()
        with pytest.raises(pib.BundleError, match=f"missing {re.escape(name)}"):
            pib.check(broken)
    with pytest.raises(pib.BundleError, match="no bundle folder"):
        pib.check(tmp_path / "nowhere")


def test_check_catches_a_spec_that_does_not_fit_the_model(bundle, tmp_path):
    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    meta = json.loads((broken / "labels.json").read_text())
    meta["input"]["height"] = 32
    (broken / "labels.json").write_text(json.dumps(meta))
    with pytest.raises(pib.BundleError, match="model.onnx takes \\(N, 1, 28, 28\\)"):
        pib.check(broken)
    (broken / "labels.json").write_text("{}")
    with pytest.raises(pib.BundleError, match="not a bundle's labels file"):
        pib.check(broken)


def test_build_rejects_a_model_it_cannot_serve(tiny_onnx, tmp_path):
    with pytest.raises(ValueError, match="10 outputs but 3 labels"):
        pib.build(tiny_onnx, tmp_path / "b", labels=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="no model file at"):
        pib.build(tmp_path / "missing.onnx", tmp_path / "b")
    with pytest.raises(TypeError, match="needs an example input batch"):
        pib.build(tiny_cnn(), tmp_path / "b")
    with pytest.raises(ValueError, match="the example is \\(2, 1, 32, 32\\)"):
        pib.build(tiny_onnx, tmp_path / "b", torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="3-channel input needs mean= and std="):
        pib.build(tiny_cnn(channels=3), tmp_path / "b", torch.zeros(2, 3, 32, 32))
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


@pytest.mark.parametrize("shape, mean, std, error", [
    ((2, 28, 28), None, None, "grayscale \\(1 channel\\) or RGB \\(3 channels\\)"),
    ((1, 28), None, None, "\\(N, channels, height, width\\)"),
    ((3, 8, 8), [0.5, 0.5], 0.2, "mean has 2 values for a 3-channel input"),
    ((1, 8, 8), 0.5, 0.0, "std must be positive"),
])
def test_input_spec_names_what_is_wrong(shape, mean, std, error):
    with pytest.raises(ValueError, match=error):
        pib.input_spec(shape, mean, std)


def test_labels_json_carries_the_input_spec_read_from_the_model(bundle, colour_bundle):
    meta = json.loads((bundle / "labels.json").read_text())
    assert meta["labels"] == list(data.CLASSES)
    assert meta["input"] == pib.FASHION_MNIST
    assert (meta["input"]["mean"], meta["input"]["std"]) == ([data.MEAN], [data.STD])
    assert [meta["input"][k] for k in ("channels", "height", "width")] == [1, 28, 28]
    _, colour = colour_bundle
    spec = json.loads((colour / "labels.json").read_text())["input"]
    assert (spec["channels"], spec["height"], spec["width"], spec["mode"]) == (3, 32, 32, "RGB")
    assert (spec["mean"], spec["std"]) == (COLOUR_MEAN, COLOUR_STD)
    readme = (colour / "README.md").read_text()
    assert "a colour data set classifier" in readme and "32×32 RGB" in readme
    assert "garment" not in readme and "{{" not in readme


@pytest.mark.parametrize("runtime, module, dist", [("onnxruntime", "onnxruntime", "onnxruntime"),
                                                   ("litert", "ai_edge_litert", "ai-edge-litert"),
                                                   ("executorch", "executorch", "executorch")])
def test_requirements_pin_exact_versions_of_what_predict_needs(runtime, module, dist):
    pins = dict(line.split("==") for line in pib.requirements_file(runtime).read_text()
                .splitlines() if line and not line.startswith("#"))
    assert {dist, "numpy", "Pillow"} <= set(pins)
    assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in pins.values())
    source = (pi.TEMPLATE / "predict.py").read_text()
    imports = set(re.findall(r"^\s*(?:import|from) (\w+)", source, re.M))
    # ExecuTorch's bundle finds the wheel's C++ libraries without importing it (or torch)
    assert module in imports or f'find_spec("{module}")' in source
    # predict.py imports only the standard library, numpy, Pillow and two runtimes
    assert imports - {"__future__", "argparse", "json", "os", "platform", "sys", "time",
                      "pathlib", "warnings", "hashlib", "shutil", "subprocess", "tempfile",
                      "importlib"} == {"onnxruntime", "ai_edge_litert", "numpy", "PIL"}


def test_the_executorch_bundle_installs_no_torch():
    pins = {line.split("==")[0] for line in pib.requirements_file("executorch").read_text()
            .splitlines() if line and not line.startswith("#")}
    assert pins == {"executorch", "numpy", "Pillow"}


def test_predict_says_how_to_get_a_compiler_when_the_executorch_runner_cannot_be_built(tmp_path):
    from edgelab import edge

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 10)).eval()
    pte = edge.export_pte(model, tmp_path / "m.pte", torch.zeros(1, 1, 28, 28))
    bundle = pib.build(pte, tmp_path / "b", name="tiny")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, str(bundle / "predict.py"), "--benchmark", "--runs", "1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2
    assert "no C++ compiler: sudo apt install g++" in run.stderr
    assert not (tmp_path / "cache" / "edgelab-pi").exists() or \
        not any((tmp_path / "cache" / "edgelab-pi").iterdir())


def test_predict_builds_the_executorch_runner_once_and_reuses_it(tmp_path):
    from edgelab import edge

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 10)).eval()
    pte = edge.export_pte(model, tmp_path / "m.pte", torch.zeros(1, 1, 28, 28))
    bundle = pib.build(pte, tmp_path / "b", name="tiny")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    said = []
    for _ in range(2):
        run = subprocess.run([sys.executable, str(bundle / "predict.py"), "--benchmark",
                              "--runs", "1"], capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr
        said.append("building ExecuTorch's runner once" in run.stderr)
    assert said == [True, False]
    assert len(list((tmp_path / "cache" / "edgelab-pi").iterdir())) == 1


def test_the_executorch_runner_reports_a_broken_program_in_one_line(tmp_path):
    from edgelab import edge

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 10)).eval()
    pte = edge.export_pte(model, tmp_path / "m.pte", torch.zeros(1, 1, 28, 28))
    bundle = pib.build(pte, tmp_path / "b", name="tiny")
    (bundle / "model.pte").write_bytes(b"not a program" * 10)
    run = pib.run_predict(bundle, ["--benchmark", "--runs", "1"])
    assert run.returncode == 1
    assert "ExecuTorch's runner could not open" in run.stderr
    assert "Program identifier" in run.stderr and "InvalidProgram" in run.stderr   # the reason
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) <= 2


def test_each_runtime_pins_the_versions_the_workbook_measures_with():
    import importlib.metadata as md

    for runtime, dist in (("litert", "ai-edge-litert"), ("executorch", "executorch")):
        pins = dict(line.split("==") for line in pib.requirements_file(runtime).read_text()
                    .splitlines() if line and not line.startswith("#"))
        assert pins[dist] == md.version(dist).split("+")[0]


# ---- predict.py ---------------------------------------------------------------------------

def test_predict_on_test_pngs_equals_onnxruntime_on_the_test_tensors(bundle, tmp_path):
    paths, _ = pib.write_test_pngs(tmp_path / "imgs", 12)
    run = pib.run_predict(bundle, ["--json", "--threads", "1", str(tmp_path / "imgs")])
    assert run.returncode == 0, run.stderr
    preds = json.loads(run.stdout)["predictions"]
    assert [p["file"] for p in preds] == [str(p) for p in paths]
    x = data.tensors("test", limit=12)[0]
    expected = evaluation.predict_logits(runtime.session(bundle / "model.onnx"), x).numpy()
    np.testing.assert_allclose(np.array([p["logits"] for p in preds]), expected, atol=1e-5)
    np.testing.assert_allclose(pib.predict_here(bundle, paths), expected, atol=1e-5)
    assert run.stderr == ""   # 28x28 grayscale: nothing to convert


def test_predict_on_a_colour_32x32_model_equals_the_model(colour_bundle, tmp_path):
    model, colour = colour_bundle
    pixels = pib.sample_pixels(pib.read_meta(colour)["input"], 10)
    assert pixels.shape == (10, 32, 32, 3) and pixels.dtype == np.uint8
    paths = pib.write_pngs(tmp_path / "imgs", pixels)
    run = pib.run_predict(colour, ["--json", "--threads", "1", *map(str, paths)])
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""   # 32x32 RGB: nothing to convert
    preds = json.loads(run.stdout)["predictions"]
    # the training-side preprocessing, written here independently of predict.py
    x = (pixels / 255.0 - np.array(COLOUR_MEAN)) / np.array(COLOUR_STD)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(np.array([p["logits"] for p in preds]), expected, atol=1e-4)
    assert [p["index"] for p in preds] == expected.argmax(1).tolist()
    assert all(p["label"].startswith("class ") for p in preds)


def test_predict_converts_a_grayscale_image_for_a_colour_model_and_says_so(colour_bundle,
                                                                           tmp_path):
    _, colour = colour_bundle
    Image.fromarray(np.full((50, 40), 128, np.uint8)).save(tmp_path / "gray.png")
    run = pib.run_predict(colour, [str(tmp_path / "gray.png")])
    assert run.returncode == 0, run.stderr
    assert "40x50 L; converted to RGB and resized to 32x32" in run.stderr
    bench = pib.run_predict(colour, ["--benchmark", "--json", "--runs", "3", "--batch", "2"])
    assert bench.returncode == 0 and json.loads(bench.stdout)["batch"] == 2, bench.stderr


def test_predict_converts_a_colour_image_of_another_size_and_says_so(bundle, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    run = pib.run_predict(bundle, [str(tmp_path / "photo.jpg")])
    assert run.returncode == 0, run.stderr
    classes = "|".join(map(re.escape, data.CLASSES))
    assert re.match(r".*photo\.jpg: (" + classes + r") \(", run.stdout)
    assert "90x120 RGB; converted to grayscale and resized to 28x28" in run.stderr


def test_predict_names_a_bad_path_or_a_file_that_is_not_an_image(bundle, tmp_path):
    run = pib.run_predict(bundle, [str(tmp_path / "nope.png")])
    assert run.returncode == 2 and "no such file or folder: " in run.stderr
    assert "nope.png" in run.stderr
    (tmp_path / "text.png").write_text("not an image")
    run = pib.run_predict(bundle, [str(tmp_path / "text.png")])
    assert run.returncode == 2 and "not an image Pillow can read" in run.stderr
    assert "28x28 grayscale" in run.stderr and "Traceback" not in run.stderr
    run = pib.run_predict(bundle, [])
    assert run.returncode == 2 and "--benchmark" in run.stderr


def test_predict_names_a_labels_file_without_an_input_spec(bundle, tmp_path):
    broken = tmp_path / "b"
    shutil.copytree(bundle, broken)
    (broken / "labels.json").write_text(json.dumps({"labels": list(data.CLASSES)}))
    run = pib.run_predict(broken, ["--benchmark"])
    assert run.returncode == 2 and "'input' object with channels, height, width" in run.stderr


def test_predict_benchmark_mode_reports_latency(bundle):
    run = pib.run_predict(bundle, ["--benchmark", "--json", "--runs", "5", "--batch", "2",
                                   "--threads", "1"])
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["batch"] == 2 and out["runs"] == 5 and 0 < out["median_ms"] <= out["p90_ms"]


def test_write_pngs_keeps_the_pixels_and_refuses_floats(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    paths = pib.write_pngs(tmp_path, pixels)
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(p)) for p in paths]), pixels)
    with pytest.raises(ValueError, match="uint8 \\(N, H, W\\) or \\(N, H, W, 3\\)"):
        pib.write_pngs(tmp_path, pixels.astype(np.float32))


# -- the preprocessing exercise (05) is what predict.py computes ------------------------------

def test_preprocess_reference_is_what_predict_py_computes_from_a_png(tmp_path):
    from edgelab import check

    predict = pib.load_predict()
    paths, _ = pib.write_test_pngs(tmp_path, 2)
    meta = {"labels": list(data.CLASSES), "input": pib.FASHION_MNIST}
    pixels = np.stack([np.asarray(Image.open(p)) for p in paths])
    reference = check.preprocess(lambda p, m, s: (_ for _ in ()).throw(NotImplementedError),
                                 quiet=True)
    ours = reference(pixels, data.MEAN, data.STD)
    theirs = np.stack([predict.preprocess(p, meta) for p in paths])
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.heavy
@pytest.mark.parametrize("runtime", ["litert", "executorch"])
def test_a_bundle_in_another_runtime_ships_its_file_and_predicts_like_torch(runtime, tmp_path):
    from edgelab import edge

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 10)).eval()
    files = edge.export(model, tmp_path / "m", runtime, torch.zeros(2, 1, 28, 28), batches=(1,))
    bundle = pib.build(files[1], tmp_path / "b", name="tiny")
    meta = pib.read_meta(bundle)
    assert meta["runtime"] == runtime and meta["model"] == pib.MODEL_FILES[runtime]
    assert set(pib.check(bundle)) == set(pib.bundle_files(runtime))
    assert (bundle / "requirements.txt").read_text() == pib.requirements_file(runtime).read_text()
    readme = (bundle / "README.md").read_text()
    assert "{{" not in readme and pib.MODEL_FILES[runtime] in readme
    paths, labels = pib.write_test_pngs(tmp_path / "png", 5)
    out = pib.run_predict(bundle, ["--json", *map(str, paths)])
    assert out.returncode == 0, out.stderr
    preds = json.loads(out.stdout)
    assert preds["runtime"] == runtime and len(preds["predictions"]) == 5
    here = pib.predict_here(bundle, paths)
    np.testing.assert_allclose(np.array([p["logits"] for p in preds["predictions"]]), here,
                               atol=1e-5)
    # the bundle's runner (ExecuTorch's C++ runtime) and edgelab's session (its Python runtime)
    # run the same program to the same logits
    x = np.stack([pib.load_predict(bundle).preprocess(p, meta) for p in paths])
    np.testing.assert_allclose(edge.session(files).run(None, {"x": x})[0], here, atol=1e-6)
    if runtime == "executorch":   # and the int8 program too
        q = edge.export(model, tmp_path / "q", runtime, torch.zeros(2, 1, 28, 28),
                        calibration=torch.randn(16, 1, 28, 28), batches=(1,))
        qbundle = pib.build(q[1], tmp_path / "qb", name="tiny-int8")
        np.testing.assert_allclose(edge.session(q).run(None, {"x": x})[0],
                                   pib.predict_here(qbundle, paths), atol=1e-6)
