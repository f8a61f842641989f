import pytest
import torch

from edgelab import latency, models


def test_architecture_key_ignores_weight_values_but_not_shapes():
    a = models.student(widths=(8, 16), blocks=1)
    b = models.student(widths=(8, 16), blocks=1)
    with torch.no_grad():
        b.fc.weight.zero_()
    assert latency.architecture_key(a) == latency.architecture_key(b) != ""
    assert latency.architecture_key(models.student(widths=(8, 24), blocks=1)) != latency.architecture_key(a)


def test_interleaved_latency_times_every_model_each_round_and_reports_the_spread(monkeypatch):
    calls = []
    monkeypatch.setattr(latency, "_timer_stats",
                        lambda fn, t, threads, warmup=3: (fn(), (len(calls), len(calls) + 0.5))[1])
    models_ = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    monkeypatch.setattr(latency, "_latency_fn", lambda m, x: m)
    res = latency.interleaved_latency(models_, batch_size=1, rounds=3, images=torch.zeros(1, 1, 28, 28))
    assert calls[:3] == ["a", "b", "c"]                            # the warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotated rounds
    assert set(res) == {"a", "b", "c"} and all(r["rounds"] == 3 for r in res.values())
    lo, hi = res["a"]["spread_ms"]
    assert lo <= res["a"]["median_ms"] <= hi


def test_remeasure_latency_updates_only_the_named_records_and_refuses_unknown_names():
    model = models.student(widths=(4, 8), blocks=1).eval()
    records = [{"name": "a"}, {"name": "b", "latency_b1_ms": -1.0}, {"name": "c"}]
    latency.remeasure_latency(records, {"a": model, "b": model}, batch_sizes=(1,), rounds=3,
                              min_run_time=0.03)
    assert records[1]["latency_b1_ms"] > 0 and "latency_b1_spread_ms" in records[0]
    assert "latency_b1_ms" not in records[2]
    with pytest.raises(KeyError, match="no record named"):
        latency.remeasure_latency(records, {"zzz": model}, batch_sizes=(1,), rounds=3, min_run_time=0.01)
    with pytest.raises(ValueError, match="at least 3"):
        latency.interleaved_latency({"a": model}, rounds=2)


def _timed(name, arch, b1, b64=10.0, runtime="torch"):
    return {"name": name, "arch": arch, "runtime": runtime, "threads": 2, "latency_b1_ms": b1,
            "latency_b64_ms": b64}


def test_same_architecture_latencies_must_agree_within_ten_percent():
    ok = [_timed("kd-s0", "k1", 1.00), _timed("scratch-s0", "k1", 1.08), _timed("teacher", "k2", 9.0)]
    assert latency.same_architecture_problems(ok) == []
    bad = ok + [_timed("kd-s1", "k1", 1.30)]
    found = latency.same_architecture_problems(bad)
    assert len(found) == 1 and "kd-s1" in found[0] and "kd-s0" in found[0] and "batch 1" in found[0]
    # another runtime or no key: not the same architecture
    assert latency.same_architecture_problems(ok + [_timed("x", "k1", 5.0, runtime="onnxruntime"),
                                                   _timed("y", "", 5.0)]) == []


def test_a_gap_within_the_models_own_round_to_round_range_is_not_a_disagreement():
    # 11 % apart, but each model's rounds reach into the other's: noise, by the rounds' own account
    a = {**_timed("s1", "k1", 0.160), "latency_b1_spread_ms": [0.154, 0.262]}
    b = {**_timed("s3", "k1", 0.178), "latency_b1_spread_ms": [0.155, 0.171]}
    assert latency.same_architecture_problems([a, b]) == []
    # every round of one slower than every round of the other: a real difference
    b["latency_b1_spread_ms"] = [0.172, 0.190]
    a["latency_b1_spread_ms"] = [0.150, 0.165]
    found = latency.same_architecture_problems([a, b])
    assert len(found) == 1 and "s3" in found[0] and "s1" in found[0]


def test_per_tensor_and_per_channel_int8_copies_key_as_different_architectures():
    # They run different requantization kernels, so they need not time alike.
    import warnings

    import torch.ao.quantization as tq

    def int8(qconfig):
        m = torch.nn.Sequential(tq.QuantStub(), torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(64, 2), tq.DeQuantStub()).eval()
        m.qconfig = qconfig
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tq.prepare(m, inplace=True)
            m(torch.randn(2, 1, 6, 6))
            tq.convert(m, inplace=True)
        return m

    per_channel = latency.architecture_key(int8(tq.get_default_qconfig("fbgemm")))
    per_tensor = latency.architecture_key(int8(tq.default_qconfig))
    assert per_channel and per_tensor
    assert per_channel != per_tensor
    assert per_channel == latency.architecture_key(int8(tq.get_default_qconfig("fbgemm")))
