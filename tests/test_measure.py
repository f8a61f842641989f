import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from edgelab import data, measure, models


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


def test_fp32_state_dict_takes_about_four_bytes_per_parameter():
    m = models.student()
    n_bytes = len(measure.state_dict_bytes(m))
    assert 4 * measure.count_params(m) < n_bytes < 4 * measure.count_params(m) * 1.1


def test_nonzero_counts_only_the_weights_that_are_not_zero():
    m = tiny_cnn()
    with torch.no_grad():
        m[0].weight[:2] = 0  # 2 filters of 9 weights
    assert measure.count_params(m) == 4 * 9 + 4 + 4 * 10 + 10
    assert measure.count_nonzero(m) == measure.count_params(m) - 18


def test_nonzero_sees_a_pruning_mask_not_the_original_weights():
    m = tiny_cnn()
    tprune.l1_unstructured(m[4], "weight", amount=0.5)
    assert measure.count_params(m) == 4 * 9 + 4 + 4 * 10 + 10
    assert measure.count_nonzero(m) == measure.count_params(m) - 20


def test_a_convolutions_macs_equal_the_formula():
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=False)
    # output 14x14: every output value takes C_in * k * k multiply-accumulates
    assert measure.count_macs(conv, (1, 3, 28, 28)) == 8 * 14 * 14 * 3 * 3 * 3


def test_macs_by_layer_sums_to_the_total_for_a_plain_cnn():
    m = tiny_cnn()
    layers = measure.macs_by_layer(m)
    assert layers == {"0": 4 * 28 * 28 * 9, "4": 40}
    assert sum(layers.values()) == measure.count_macs(m)


def test_gzip_shrinks_zeros_but_the_raw_size_stays():
    m = models.student()
    raw, gz = measure.artifact_sizes(measure.state_dict_bytes(m))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(torch.rand_like(p) > 0.9)
    raw0, gz0 = measure.artifact_sizes(measure.state_dict_bytes(m))
    assert raw0 == raw and gz0 < gz / 3


def test_measure_returns_one_complete_record():
    r = measure.measure(tiny_cnn(), "tiny", tags=["fp32"], limit=200, batch_sizes=(1, 4),
                        min_run_time=0.05, notebook="test")
    assert r["test_images"] == 200 and 0 <= r["accuracy"] <= 1
    assert r["params"] == r["nonzero_params"] == 90 and r["macs"] == 4 * 28 * 28 * 9 + 40
    assert r["bytes"] > 4 * 90 and r["gzip_bytes"] > 0
    assert 0 < r["latency_b1_ms"] <= r["latency_b1_p90_ms"]
    assert 0 < r["latency_b4_ms"] and r["threads"] >= 1 and r["runtime"] == "torch"
    assert r["tags"] == ["fp32"] and r["notebook"] == "test"


def test_gzip_bytes_are_a_valid_gzip_file_of_the_whole_artifact():
    import gzip

    blob = measure.state_dict_bytes(models.student())
    packed = measure.gzip_compress([blob], chunk_bytes=100_000)  # several members
    assert gzip.decompress(packed) == blob
    assert measure.artifact_sizes(blob) == (len(blob), len(measure.gzip_compress([blob])))


def test_saved_sizes_equal_the_sizes_of_the_saved_bytes_without_keeping_them(monkeypatch):
    m = models.student()
    for chunk in (measure.GZIP_CHUNK, 100_000):  # one gzip member, then several
        monkeypatch.setattr(measure, "GZIP_CHUNK", chunk)
        blob = measure.state_dict_bytes(m)
        assert measure.saved_sizes(m) == (len(blob), len(measure.gzip_compress([blob], chunk)))
        assert measure.saved_size(m) == len(blob)


def test_gzip_compress_takes_tensors_of_any_dtype_as_their_raw_bytes():
    import gzip

    parts = [torch.randn(5, 3), torch.ones(4, dtype=torch.bfloat16), torch.tensor(2.0), b"end"]
    raw = b"".join(p if isinstance(p, bytes) else p.reshape(-1).view(torch.uint8).numpy().tobytes()
                   for p in parts)
    assert gzip.decompress(measure.gzip_compress(parts)) == raw
    assert measure.gzip_size(parts) == len(measure.gzip_compress(parts))


def test_accuracy_batch_by_batch_equals_accuracy_on_the_whole_tensor():
    m = tiny_cnn()
    x, y = data.tensors("test", limit=300)
    acc, n = measure.accuracy(m, limit=300)
    assert n == 300 and abs(acc - measure.accuracy_on(m, x, y)) < 1e-6


def test_release_after_every_cell_registers_once_in_ipython_and_is_a_no_op_elsewhere():
    from IPython.core.interactiveshell import InteractiveShell

    measure.release_after_every_cell()  # plain Python: nothing to hook, no error
    shell = InteractiveShell.instance()
    try:
        measure.release_after_every_cell()
        measure.release_after_every_cell()
        hooks = [h for h in shell.events.callbacks["post_run_cell"]
                 if h.__name__ == "_release_after_cell"]
        assert len(hooks) == 1
        shell.run_cell("x = 1")  # the hook runs after a cell without error
    finally:
        InteractiveShell.clear_instance()


def test_importing_edgelab_registers_no_hook_until_setup_notebook(monkeypatch):
    import subprocess
    import sys
    code = ("import IPython.core.interactiveshell as s; shell = s.InteractiveShell.instance(); "
            "import edgelab.measure, edgelab.quantize, edgelab.widgets, edgelab.deploy; "
            "n = lambda: len(shell.events.callbacks['post_run_cell']); before = n(); "
            "edgelab.measure.setup_notebook(); print(before, n())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1"]


def test_architecture_key_ignores_weight_values_but_not_shapes():
    a = models.student(widths=(8, 16), blocks=1)
    b = models.student(widths=(8, 16), blocks=1)
    with torch.no_grad():
        b.fc.weight.zero_()
    assert measure.architecture_key(a) == measure.architecture_key(b) != ""
    assert measure.architecture_key(models.student(widths=(8, 24), blocks=1)) != measure.architecture_key(a)


def test_interleaved_latency_times_every_model_each_round_and_reports_the_spread(monkeypatch):
    calls = []
    monkeypatch.setattr(measure, "_timer_stats",
                        lambda fn, t, threads, warmup=3: (fn(), (len(calls), len(calls) + 0.5))[1])
    models_ = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    monkeypatch.setattr(measure, "_latency_fn", lambda m, x: m)
    res = measure.interleaved_latency(models_, batch_size=1, rounds=3, images=torch.zeros(1, 1, 28, 28))
    assert calls[:3] == ["a", "b", "c"]                            # the warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotated rounds
    assert set(res) == {"a", "b", "c"} and all(r["rounds"] == 3 for r in res.values())
    lo, hi = res["a"]["spread_ms"]
    assert lo <= res["a"]["median_ms"] <= hi


def test_remeasure_latency_updates_only_the_named_records_and_refuses_unknown_names():
    model = models.student(widths=(4, 8), blocks=1).eval()
    records = [{"name": "a"}, {"name": "b", "latency_b1_ms": -1.0}, {"name": "c"}]
    measure.remeasure_latency(records, {"a": model, "b": model}, batch_sizes=(1,), rounds=3,
                              min_run_time=0.03)
    assert records[1]["latency_b1_ms"] > 0 and "latency_b1_spread_ms" in records[0]
    assert "latency_b1_ms" not in records[2]
    import pytest
    with pytest.raises(KeyError, match="no record named"):
        measure.remeasure_latency(records, {"zzz": model}, batch_sizes=(1,), rounds=3, min_run_time=0.01)
    with pytest.raises(ValueError, match="at least 3"):
        measure.interleaved_latency({"a": model}, rounds=2)


def test_peak_activation_memory_keeps_a_residual_branch_alive_across_its_block():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return x + self.b(self.a(x))    # x stays alive while a and b run

    r = measure.peak_activation_bytes(Block(), (1, 2, 4, 4), bytes_per_value=4)
    one = 2 * 4 * 4 * 4
    assert r["peak_bytes"] == 3 * one      # x, a's output and b's output at once
    assert measure.peak_activation_bytes(Block(), (1, 2, 4, 4), 1)["peak_bytes"] == 3 * one // 4
    chain = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1))
    assert measure.peak_activation_bytes(chain, (1, 2, 4, 4))["peak_bytes"] == 2 * one
