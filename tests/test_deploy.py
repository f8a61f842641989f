"""ONNX export (edgelab.deploy): one self-contained file that matches PyTorch at any batch size,
one clear error for a model it cannot capture, and ONNX Runtime latency by threads and batch.
The bundle and the emulated Pi are tests/test_pi_*.py."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from edgelab import data, deploy, runtime


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
