"""Deployment (edgelab.deploy): ONNX export and its check, the Raspberry Pi bundle and its
predict.py, and the bundle verified on an emulated Cortex-A72 (qemu). The arm64 test is never
skipped: `make test` sets the emulator up (`make pi-rootfs`) and the check must pass."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from edgelab import data, deploy, measure, runtime


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


class DataDependent(nn.Module):
    """A branch on a tensor's value: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        if x.mean() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def tiny():
    return tiny_cnn()


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    return deploy.export(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx", torch.zeros(2, 1, 28, 28))


@pytest.fixture(scope="module")
def bundle(tiny_onnx, tmp_path_factory):
    return deploy.build_bundle(tiny_onnx, tmp_path_factory.mktemp("b") / "pi_bundle", name="tiny",
                               accuracy=0.1, test_images=100, macs=1_000_000)


# ---- export -------------------------------------------------------------------------------

def test_export_of_a_tiny_model_matches_torch_with_any_batch_size(tiny, tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx))
    assert not any(t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL
                   for t in model.graph.initializer), "weights must be inside the one .onnx file"
    assert not list(tiny_onnx.parent.glob("*.data")), "no external-data file next to it"
    result = deploy.check_export(tiny, tiny_onnx, data.tensors("test", limit=64)[0])
    assert result["max_abs_diff"] < 1e-4 and result["same_top1"] == 1.0
    sess = runtime.session(tiny_onnx, threads=1)
    for n in (1, 3):
        x = data.tensors("test", limit=n)[0]
        got = sess.run(None, {"image": x.numpy()})[0]
        with torch.inference_mode():
            np.testing.assert_allclose(got, tiny(x).numpy(), atol=1e-4)


def test_a_model_that_cannot_be_traced_is_one_clear_error(tmp_path):
    with pytest.raises(deploy.ExportError, match="could not export DataDependent to ONNX") as e:
        deploy.export(DataDependent(), tmp_path / "bad.onnx", torch.zeros(2, 1, 28, 28))
    text = str(e.value)
    assert "data-dependent" in text and "Python branches on tensor values" in text
    assert "\x1b[" not in text and len(text.splitlines()) == 2
    assert not (tmp_path / "bad.onnx").exists()


def test_export_needs_a_module(tmp_path):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        deploy.export(lambda x: x, tmp_path / "f.onnx", torch.zeros(2, 1, 28, 28))


def test_check_export_catches_a_file_from_another_model(tiny_onnx):
    with pytest.raises(AssertionError, match="differ from PyTorch's"):
        deploy.check_export(tiny_cnn(seed=1), tiny_onnx, data.tensors("test", limit=16)[0])


def test_latency_grid_has_a_row_per_thread_count_and_batch_size(tiny_onnx):
    rows = deploy.latency_grid(tiny_onnx, threads=(1, 2), batch_sizes=(1, 4), min_run_time=0.01)
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    assert all(r["median_ms"] > 0 and r["per_image_ms"] <= r["median_ms"] for r in rows)


# ---- the bundle ---------------------------------------------------------------------------

def test_bundle_has_every_file_and_check_bundle_names_a_missing_one(bundle, tmp_path):
    sizes = deploy.check_bundle(bundle)
    assert set(sizes) == set(deploy.BUNDLE_FILES) and all(n > 0 for n in sizes.values())
    assert (bundle / "predict.py").read_text() == (deploy.TEMPLATE / "predict.py").read_text()
    readme = (bundle / "README.md").read_text()
    assert "{{" not in readme and "10.00 %" in readme and "not measured here" in readme
    ratio = deploy.resnet18_224_macs() / 1_000_000
    assert f"does 1,000,000 multiply-adds per image, {ratio:.1f} times fewer" in readme
    assert 1.7e9 < deploy.resnet18_224_macs() < 1.9e9   # torchvision's docs: 1.81 GFLOPS
    for name in deploy.BUNDLE_FILES:
        broken = tmp_path / name.replace(".", "_")
        shutil.copytree(bundle, broken)
        (broken / name).unlink()
        with pytest.raises(deploy.BundleError, match=f"missing {re.escape(name)}"):
            deploy.check_bundle(broken)
    with pytest.raises(deploy.BundleError, match="no bundle folder"):
        deploy.check_bundle(tmp_path / "nowhere")


def test_build_bundle_rejects_a_model_it_cannot_serve(tiny_onnx, tmp_path):
    with pytest.raises(ValueError, match="10 outputs but 3 labels"):
        deploy.build_bundle(tiny_onnx, tmp_path / "b", labels=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        deploy.build_bundle(tmp_path / "missing.onnx", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_labels_json_carries_the_training_normalisation(bundle):
    meta = json.loads((bundle / "labels.json").read_text())
    assert meta["labels"] == list(data.CLASSES)
    assert (meta["input"]["mean"], meta["input"]["std"]) == (data.MEAN, data.STD)
    assert meta["input"]["size"] == [28, 28]


def test_requirements_pin_exact_versions_of_what_predict_needs():
    pins = dict(line.split("==") for line in (deploy.TEMPLATE / "requirements.txt").read_text()
                .splitlines() if line and not line.startswith("#"))
    assert {"onnxruntime", "numpy", "Pillow"} <= set(pins)
    assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in pins.values())
    imports = set(re.findall(r"^\s*(?:import|from) (\w+)", (deploy.TEMPLATE / "predict.py")
                             .read_text(), re.M))
    assert imports - {"__future__", "argparse", "json", "os", "platform", "sys", "time",
                      "pathlib"} == {"onnxruntime", "numpy", "PIL"}


# ---- predict.py ---------------------------------------------------------------------------

def test_predict_on_test_pngs_equals_onnxruntime_on_the_test_tensors(bundle, tmp_path):
    paths, _ = deploy.write_test_pngs(tmp_path / "imgs", 12)
    run = deploy.run_predict(bundle, ["--json", "--threads", "1", str(tmp_path / "imgs")])
    assert run.returncode == 0, run.stderr
    preds = json.loads(run.stdout)["predictions"]
    assert [p["file"] for p in preds] == [str(p) for p in paths]
    x = data.tensors("test", limit=12)[0]
    expected = measure.predict_logits(runtime.session(bundle / "model.onnx"), x).numpy()
    np.testing.assert_allclose(np.array([p["logits"] for p in preds]), expected, atol=1e-5)
    assert run.stderr == ""   # 28x28 grayscale: nothing to convert


def test_predict_converts_a_colour_image_of_another_size_and_says_so(bundle, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    run = deploy.run_predict(bundle, [str(tmp_path / "photo.jpg")])
    assert run.returncode == 0, run.stderr
    classes = "|".join(map(re.escape, data.CLASSES))
    assert re.match(r".*photo\.jpg: (" + classes + r") \(", run.stdout)
    assert "90x120 RGB; converted to grayscale and resized to 28x28" in run.stderr


def test_predict_names_a_bad_path_or_a_file_that_is_not_an_image(bundle, tmp_path):
    run = deploy.run_predict(bundle, [str(tmp_path / "nope.png")])
    assert run.returncode == 2 and "no such file or folder: " in run.stderr
    assert "nope.png" in run.stderr
    (tmp_path / "text.png").write_text("not an image")
    run = deploy.run_predict(bundle, [str(tmp_path / "text.png")])
    assert run.returncode == 2 and "not an image Pillow can read" in run.stderr
    assert "28x28 grayscale" in run.stderr and "Traceback" not in run.stderr
    run = deploy.run_predict(bundle, [])
    assert run.returncode == 2 and "--benchmark" in run.stderr


def test_predict_benchmark_mode_reports_latency(bundle):
    run = deploy.run_predict(bundle, ["--benchmark", "--json", "--runs", "5", "--batch", "2",
                                      "--threads", "1"])
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["batch"] == 2 and out["runs"] == 5 and 0 < out["median_ms"] <= out["p90_ms"]


# ---- the emulated Pi CPU ------------------------------------------------------------------

def test_debian_mirror_is_read_from_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGELAB_DEBIAN_MIRROR", raising=False)
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert deploy.debian_mirror([tmp_path / "debian.sources"]) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert deploy.debian_mirror([tmp_path / "sources.list"]) == "http://old.example/debian"
    assert deploy.debian_mirror([tmp_path / "none"]) == deploy.DEFAULT_MIRROR


@pytest.mark.heavy
def test_the_bundle_predicts_the_same_on_an_emulated_cortex_a72(bundle):
    ok, why = deploy.arm64_available()
    assert ok, f"the arm64 check must run in `make test` (run `make pi-rootfs` first): {why}"
    res = deploy.verify_arm64(bundle, images=16)
    assert res["machine"] == "aarch64" and res["python"].startswith("3.11")
    assert res["cpu"]["qemu_cpu"] == "cortex-a72"
    assert not res["cpu"]["dotprod"] and not res["cpu"]["atomics"], res["cpu"]  # Armv8.0, an A72
    assert res["match"] and res["mismatches"] == 0 and res["images"] == 16
    assert res["max_abs_logit_diff"] < 1e-4


@pytest.mark.heavy
def test_the_bundle_predicts_the_same_on_an_emulated_pi5_core_with_dot_product(bundle):
    res = deploy.verify_arm64(bundle, images=8, qemu_cpu="cortex-a76")
    assert res["cpu"]["qemu_cpu"] == "cortex-a76"
    assert res["cpu"]["dotprod"] and res["cpu"]["fp16"] and res["cpu"]["atomics"], res["cpu"]
    assert res["match"] and res["max_abs_logit_diff"] < 1e-4


@pytest.mark.heavy
def test_the_emulated_pi4_core_kills_an_onnxruntime_built_for_newer_cores(bundle):
    # the check has teeth: onnxruntime 1.21.0 uses instructions an Armv8.0 core lacks
    a72 = deploy.illegal_instruction_check(bundle / "model.onnx", "cortex-a72")
    assert a72["pinned"] == 0, a72["pinned_stderr"]
    assert a72["old"] == -4 and a72["sigill"], a72["old_stderr"]     # SIGILL
    a76 = deploy.illegal_instruction_check(bundle / "model.onnx", "cortex-a76")
    assert a76["pinned"] == 0 and a76["old"] == 0, a76


def test_the_emulated_cpu_is_a_pi_core_or_a_clear_error():
    from edgelab import pi_rootfs
    assert "CPU part\t: 0xd0b" in pi_rootfs.emulated_cpuinfo(1, "cortex-a76")
    assert "CPU part\t: 0xd08" in pi_rootfs.emulated_cpuinfo(1, "cortex-a72")
    with pytest.raises(ValueError, match="cortex-a72"):
        pi_rootfs.emulated_cpuinfo(1, "max")


def test_cpu_features_name_the_bits_that_separate_the_two_pis():
    a72 = deploy.cpu_features(0b11111111)                    # fp ... crc32
    assert not (a72["dotprod"] or a72["fp16"] or a72["atomics"])
    a76 = deploy.cpu_features(0b11111111 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 20)
    assert a76["dotprod"] and a76["fp16"] and a76["atomics"] and "asimddp" in a76["features"]


def test_the_arm64_bar_reads_the_bundle_record_of_05():
    from edgelab import targets

    rec = {"notebook": "05_deploy_pi", "name": "pruned50-int8",
           "bundle": {"arm64": {"images": 300, "mismatches": 0, "match": True}}}
    assert targets._arm64_match()({"records": [rec]}) == ("300 of 300 images equal", True)
    rec["bundle"]["arm64"] = {"images": 300, "mismatches": 2, "match": False}
    assert targets._arm64_match()({"records": [rec]})[1] is False
    assert targets._arm64_match()({"records": [dict(rec, bundle={"arm64": None})]}) is None


# -- the preprocessing exercise (05) ----------------------------------------------------------

def _reference_preprocess():
    from edgelab import check
    return check.preprocess(lambda p, m, s: (_ for _ in ()).throw(NotImplementedError), quiet=True)


def test_preprocess_checker_passes_a_correct_answer_and_treats_a_stub_as_not_attempted(capsys):
    from edgelab import check

    def mine(pixels, mean, std):
        return ((pixels / 255.0 - mean) / std).astype(np.float32)[:, np.newaxis]

    assert check.preprocess(mine) is mine
    assert "all 5 checks passed" in capsys.readouterr().out
    ref = _reference_preprocess()
    assert ref is not mine and "not attempted" not in capsys.readouterr().out   # quiet
    check.preprocess(lambda p, m, s: (_ for _ in ()).throw(NotImplementedError))
    assert "not attempted" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, expect", [
    (lambda p, m, s: ((p - m) / s).astype(np.float32)[:, None], "divide by 255 first"),
    (lambda p, m, s: (p / 255).astype(np.float32)[:, None], "subtract the mean and divide by the std"),
    (lambda p, m, s: ((p / 255 - m) * s).astype(np.float32)[:, None], "do not multiply"),
    (lambda p, m, s: ((p / 255 - m) / s)[:, None], "refuses float64"),
    (lambda p, m, s: ((p / 255 - m) / s).astype(np.float32), "add the channel axis"),
    (lambda p, m, s: torch.from_numpy(((p / 255 - m) / s).astype(np.float32)[:, None]), "NumPy array"),
    (lambda p, m, s: np.stack([(i / 255 - (i / 255).mean()) / ((i / 255).std() + 1e-8)
                               for i in p]).astype(np.float32)[:, None], "never statistics of the image"),
])
def test_preprocess_checker_names_each_typical_mistake(mistake, expect, capsys):
    from edgelab import check
    assert check.preprocess(mistake) is not mistake
    assert expect in capsys.readouterr().out


def test_preprocess_checker_catches_changing_the_input_in_place(capsys):
    from edgelab import check

    def in_place(p, m, s):
        out = ((p / 255 - m) / s).astype(np.float32)[:, None]
        p[...] = 0
        return out

    check.preprocess(in_place)
    assert "do not change the caller's pixels" in capsys.readouterr().out


def test_preprocess_reference_is_what_predict_py_computes_from_a_png(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("predict", deploy.TEMPLATE / "predict.py")
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    paths, _ = deploy.write_test_pngs(tmp_path, 2)
    meta = deploy.labels_meta()
    pixels = np.stack([np.asarray(Image.open(p)) for p in paths])
    ours = _reference_preprocess()(pixels, meta["input"]["mean"], meta["input"]["std"])
    theirs = np.stack([predict.preprocess(p, meta) for p in paths])
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_arm64_summary_names_the_board_and_the_agreement():
    res = {"cpu": {"qemu_cpu": "cortex-a76"}, "onnxruntime": "1.32.0", "images": 300,
           "mismatches": 0, "max_abs_logit_diff": 2e-6}
    line = deploy.arm64_summary(res)
    assert line.startswith("Raspberry Pi 5 (cortex-a76)") and "300 of 300" in line
