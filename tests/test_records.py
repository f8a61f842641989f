import json

import pytest

from edgelab import records
from edgelab.records import Record


def small(**kw):
    return Record(**dict(dict(name="m", accuracy=0.9, test_images=100, bytes=400, gzip_bytes=300,
                              params=100, nonzero_params=100, macs=1000, threads=2), **kw))


def test_a_record_reads_as_a_mapping_and_as_attributes():
    r = small(latency_b1_ms=2.0)
    assert r["accuracy"] == r.accuracy == 0.9 and r.get("latency_b1_ms") == 2.0
    r["tags"].append("int8")
    r["selected_on"] = "val"
    assert r.tags == ["int8"] and r.selected_on == "val"


def test_unset_optional_fields_are_absent_from_the_mapping_but_none_as_attributes():
    r = small()
    assert "val_accuracy" not in r and r.get("val_accuracy") is None and r.val_accuracy is None
    with pytest.raises(KeyError):
        r["latency_b64_ms"]
    assert "params" in r and "correct" in r   # every record has these, None or not


def test_keys_that_are_not_fields_go_to_extra_and_into_the_json():
    r = small()
    r["bundle"] = {"files": ["model.onnx"]}
    r["latency_b4_ms"] = 1.5
    assert r.extra == {"bundle": {"files": ["model.onnx"]}, "latency_b4_ms": 1.5}
    d = r.to_dict()
    assert d["bundle"] == {"files": ["model.onnx"]} and d["latency_b4_ms"] == 1.5


def test_to_dict_has_the_results_json_shape_and_round_trips_through_json():
    r = small(latency_b1_ms=2.0, latency_b1_p90_ms=2.5, notebook="00_x", tags=["fp32"])
    d = json.loads(json.dumps(r.to_dict()))
    assert list(d)[:6] == ["notebook", "name", "tags", "runtime", "accuracy", "test_images"]
    assert "val_accuracy" not in d and d["latency_b1_ms"] == 2.0 and d["threads"] == 2
    assert Record.from_dict(d) == r == d


def test_a_record_refuses_no_name_an_unknown_runtime_and_accuracy_in_percent():
    with pytest.raises(ValueError, match="name"):
        Record(name="")
    with pytest.raises(ValueError, match="runtime"):
        Record(name="m", runtime="tflite")
    with pytest.raises(ValueError, match="fraction"):
        Record(name="m", accuracy=93.5)
    with pytest.raises(KeyError, match="every record has"):
        del small()["accuracy"]


def test_find_returns_the_record_in_the_asked_runtime_and_names_the_others_when_missing():
    rs = [small(name="teacher"), small(name="teacher", runtime="onnxruntime"), {"name": "old",
                                                                            "runtime": "torch"}]
    assert records.find(rs, "teacher", "onnxruntime") is rs[1]
    assert records.find(rs, "old") is rs[2]       # plain dicts from older results files too
    with pytest.raises(KeyError, match="records: .*'teacher'"):
        records.find(rs, "student")


def test_as_dict_and_as_record_accept_both_kinds():
    r = small()
    assert records.as_dict(r) == r.to_dict() and records.as_record(r) is r
    assert records.as_record(r.to_dict()) == r
