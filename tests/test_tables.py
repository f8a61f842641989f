import pytest

from edgelab import tables


def rec(name, acc, b, lat, runtime="torch"):
    return {"notebook": None, "name": name, "tags": [], "runtime": runtime, "accuracy": acc,
            "test_images": 10000, "params": b // 4, "nonzero_params": b // 4, "macs": 10 * b,
            "bytes": b, "gzip_bytes": b, "latency_b1_ms": lat, "latency_b1_p90_ms": lat,
            "latency_b64_ms": 10 * lat, "latency_b64_p90_ms": 10 * lat, "threads": 2}


def _timed(name, arch, b1, b64=10.0, runtime="torch"):
    return {"name": name, "arch": arch, "runtime": runtime, "threads": 2, "latency_b1_ms": b1,
            "latency_b64_ms": b64}


def test_table_takes_ratios_against_the_baseline_in_the_same_runtime():
    text = tables.table([rec("teacher", 0.93, 400, 4.0), rec("half", 0.92, 100, 2.0),
                         rec("teacher", 0.93, 800, 8.0, "onnxruntime"),
                         rec("int8", 0.93, 200, 2.0, "onnxruntime")])
    half = next(line for line in text.splitlines() if line.strip().startswith("half"))
    int8 = next(line for line in text.splitlines() if line.strip().startswith("int8"))
    assert "4.00" in half and "-1.00" in half
    assert "4.00" in int8 and "+0.00" in int8


def test_a_table_is_text_when_printed_and_html_in_jupyterlab():
    t = tables.table([rec("teacher", 0.93, 400, 4.0), rec("half", 0.92, 100, 2.0)])
    assert str(t).splitlines()[0].split()[:3] == ["name", "runtime", "accuracy"]
    assert repr(t) == str(t)
    html = t._repr_html_()
    assert html.count("<tr") == 3 and '<tr style="font-weight:bold">' in html   # header, 2 rows
    assert "text-align:right" in html and "&lt;" not in html


def test_table_shows_the_spread_of_interleaved_rounds():
    r = dict(_timed("teacher", "k", 2.0), latency_b1_spread_ms=[1.9, 2.1], accuracy=0.9,
             test_images=100, bytes=1000)
    assert "2.00 ±5%" in str(tables.table([r]))


def test_table_highlights_the_ratios_that_meet_a_bar_and_refuses_unknown_columns():
    t = _timed("teacher", "k", 4.0, 40.0)
    fast = _timed("small", "j", 1.0, 30.0)
    for r, n in ((t, 1000), (fast, 100)):
        r.update(accuracy=0.9, test_images=100, bytes=n)
    tab = tables.table([t, fast], bars={"×smaller": 5, "×faster b1": 3})
    html = tab._repr_html_()
    assert html.count("#cfe8d8") == 2 and "×smaller ≥ 5" in html      # 10x smaller and 4x faster
    assert tables.table([t, fast], bars={"×faster b64": 2})._repr_html_().count("#cfe8d8") == 0
    with pytest.raises(ValueError, match="ratio columns"):
        tables.table([t], bars={"accuracy": 0.9})
