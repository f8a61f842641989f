import pytest
import torch
import torch.nn as nn

from edgelab import data, evaluation, measure, runtime
from edgelab.records import Record


@pytest.fixture(autouse=True)
def _no_eval_cache(monkeypatch):
    """Each measurement here evaluates afresh (evaluation.cached_correct_mask is tested there)."""
    monkeypatch.setenv("EDGELAB_EVAL_CACHE", "0")


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


def test_measure_returns_one_complete_record():
    r = measure.measure(tiny_cnn(), "tiny", tags=["fp32"], limit=200, batch_sizes=(1, 4),
                        min_run_time=0.05, notebook="test")
    assert isinstance(r, Record)
    assert r["test_images"] == 200 and 0 <= r["accuracy"] <= 1
    assert r["params"] == r["nonzero_params"] == 90 and r["macs"] == 4 * 28 * 28 * 9 + 40
    assert r["bytes"] > 4 * 90 and r["gzip_bytes"] > 0
    assert 0 < r["latency_b1_ms"] <= r["latency_b1_p90_ms"]
    assert 0 < r["latency_b4_ms"] and r["threads"] >= 1 and r["runtime"] == "torch"
    assert r["tags"] == ["fp32"] and r["notebook"] == "test" and r.correct


@pytest.fixture
def linear_onnx(tmp_path):
    """A Flatten + Linear classifier and the same weights as a hand-built ONNX graph: no
    exporter, so the fixture takes milliseconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1)], "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "linear.onnx"
    onnx.save(proto, path)
    return model, path


def test_measure_onnx_measures_the_file_in_onnx_runtime_with_the_source_models_counts(linear_onnx):
    model, path = linear_onnx
    r = measure.measure_onnx(path, "linear", model, tags=["onnx"], limit=128, batch_sizes=(1,),
                             min_run_time=0.02, threads=1)
    assert r.runtime == "onnxruntime" and r.tags == ["onnx"] and r.threads == 1
    assert r.params == r.nonzero_params == 7850 and r.macs == 7840
    assert r.bytes == path.stat().st_size and r.latency_b1_ms > 0 and r.arch
    x, y = data.tensors("test", limit=128)
    assert r.accuracy == pytest.approx(evaluation.accuracy_on(model, x, y))   # same weights


def test_measure_onnx_reuses_a_given_session_and_measures_validation(linear_onnx):
    model, path = linear_onnx
    session = runtime.session(path, threads=1)
    r = measure.measure_onnx(path, "linear", model, session=session, limit=64, val=64,
                             batch_sizes=())
    assert r.val_images == 64 and 0 <= r.val_accuracy <= 1 and "latency_b1_ms" not in r


def test_measure_onnx_refuses_a_missing_file_a_session_as_source_and_hand_counts(linear_onnx, tmp_path):
    model, path = linear_onnx
    with pytest.raises(FileNotFoundError, match="export it first"):
        measure.measure_onnx(tmp_path / "none.onnx", "x", model)
    with pytest.raises(TypeError, match="torch module"):
        measure.measure_onnx(path, "x", runtime.session(path, threads=1))
    with pytest.raises(TypeError, match="measure_onnx takes params"):
        measure.measure_onnx(path, "x", model, params=3)


def test_measure_of_a_session_without_its_file_points_to_measure_onnx(linear_onnx):
    _, path = linear_onnx
    with pytest.raises(ValueError, match="measure_onnx"):
        measure.measure(runtime.session(path, threads=1), "x", limit=8)
