"""edgelab.edge: ExecuTorch and LiteRT files from a torch model, behind ONNX Runtime's session
interface. The conversions run on a tiny CNN (seconds each); they are the proof that the pinned
litert-torch converts with exactly the set requirements-nodeps.txt and requirements.txt install."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from edgelab import edge, measure


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(70, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def fp32_files(tmp_path_factory, images):
    d = tmp_path_factory.mktemp("edge")
    return {rt: edge.export(tiny_cnn(), d / f"tiny-{rt}", rt, images[:2], batches=(1, 8))
            for rt in edge.RUNTIMES}


def test_export_rejects_an_unknown_runtime_and_bad_batches(tmp_path, images):
    with pytest.raises(ValueError, match="runtime must be one of"):
        edge.export(tiny_cnn(), tmp_path / "m", "tflite", images[:2])
    with pytest.raises(ValueError, match="positive batch sizes"):
        edge.export(tiny_cnn(), tmp_path / "m", "litert", images[:2], batches=(0,))


def test_int8_needs_calibration_images():
    with pytest.raises(ValueError, match="calibration images"):
        edge.quantize_int8(tiny_cnn(), torch.randn(1, 1, 28, 28), "executorch")


@pytest.mark.heavy
def test_a_session_wants_files_of_one_runtime_that_exist(tmp_path, fp32_files):
    with pytest.raises(ValueError, match=r"all be \.pte \(ExecuTorch\) or all \.tflite"):
        edge.EdgeSession({1: fp32_files["executorch"][1], 8: fp32_files["litert"][8]})
    with pytest.raises(FileNotFoundError, match="no litert file"):
        edge.EdgeSession({1: tmp_path / "missing.tflite"})


@pytest.mark.heavy
@pytest.mark.parametrize("runtime", edge.RUNTIMES)
def test_fp32_files_give_torch_logits_for_any_number_of_images(runtime, fp32_files, images):
    sess = edge.session(fp32_files[runtime])
    assert sess.runtime == runtime and sess.batches == [1, 8]
    assert sess.get_inputs()[0].shape == [None, 1, 28, 28]
    with torch.inference_mode():
        expected = tiny_cnn()(images[:19]).numpy()
    got = sess.run(None, {"x": images[:19].numpy()})[0]   # 2 x b8, then 3 x b1
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.heavy
@pytest.mark.parametrize("runtime", edge.RUNTIMES)
def test_int8_files_hold_int8_and_stay_close_to_torch(runtime, tmp_path, images):
    files = edge.export(tiny_cnn(), tmp_path / "q", runtime, images[:2], calibration=images,
                        batches=(1,))
    assert files[1].stat().st_size > 0
    sess = edge.session(files)
    got = sess.run(None, {"x": images[:16].numpy()})[0]
    with torch.inference_mode():
        expected = tiny_cnn()(images[:16]).numpy()
    assert not np.allclose(got, expected, atol=1e-6)   # quantized: not the float answer
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max() + 0.05


@pytest.mark.heavy
def test_litert_int8_is_full_integer(tmp_path, images):
    files = edge.export(tiny_cnn(), tmp_path / "q", "litert", images[:2], calibration=images,
                        batches=(1,))
    tf = edge.session(files).programs[1]
    assert tf.inp["dtype"] == np.int8 and tf.out["dtype"] == np.int8


@pytest.mark.heavy
def test_measure_records_the_edge_runtime(fp32_files, images):
    labels = torch.arange(len(images)) % 10
    rec = measure.measure(edge.session(fp32_files["litert"]), "tiny", artifact=fp32_files["litert"][1],
                          images=images, labels=labels, batch_sizes=(1,), min_run_time=0.05,
                          params=1)
    assert rec.runtime == "litert" and rec.test_images == len(images)
    assert rec.bytes == fp32_files["litert"][1].stat().st_size and rec.latency_b1_ms > 0


@pytest.mark.heavy
def test_the_executorch_thread_pool_takes_the_count_asked_for(fp32_files):
    edge.session(fp32_files["executorch"], threads=1)
    assert edge.executorch_threads() == 1
    with pytest.raises(ValueError, match="at least 1"):
        edge.executorch_threads(0)
