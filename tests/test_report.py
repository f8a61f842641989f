import json

import pytest

from edgelab import report


def rec(name, acc, b, lat, runtime="torch"):
    return {"notebook": None, "name": name, "tags": [], "runtime": runtime, "accuracy": acc,
            "test_images": 10000, "params": b // 4, "nonzero_params": b // 4, "macs": 10 * b,
            "bytes": b, "gzip_bytes": b, "latency_b1_ms": lat, "latency_b1_p90_ms": lat,
            "latency_b64_ms": 10 * lat, "latency_b64_p90_ms": 10 * lat, "threads": 2}


def test_notebook_results_are_written_whole_with_the_notebooks_name(tmp_path):
    path = report.write_notebook_results("00_x", [rec("teacher", 0.93, 400, 5.0)],
                                         widgets={"w": {"median_s": 0.1, "moves": 3}},
                                         smoke=True, results_dir=tmp_path)
    payload = json.loads(path.read_text())
    assert payload["smoke"] is True and payload["records"][0]["notebook"] == "00_x"
    assert payload["widgets"] == {"w": {"median_s": 0.1, "moves": 3}}
    assert [p.name for p in tmp_path.iterdir()] == ["00_x.json"]  # no temporary file left


def test_results_need_a_notebook_name(tmp_path):
    with pytest.raises(ValueError, match="notebook's name"):
        report.write_notebook_results("", [], results_dir=tmp_path)


def test_assemble_merges_notebooks_and_prefixes_widget_names(tmp_path):
    report.write_notebook_results("00_a", [rec("teacher", 0.935, 400, 5.0)], results_dir=tmp_path)
    report.write_notebook_results("01_b", [rec("small", 0.93, 100, 2.0)],
                                  widgets={"rate": {"median_s": 0.4, "moves": 5}},
                                  results_dir=tmp_path)
    out = tmp_path / "results.json"
    res = report.assemble({"smoke": False}, {"00_a": {"seconds": 10, "peak_rss_mb": 900}},
                          results_dir=tmp_path, out=out)
    assert json.loads(out.read_text()) == res
    assert [r["notebook"] for r in res["records"]] == ["00_a", "01_b"]
    assert res["widgets"] == {"01_b.rate": {"median_s": 0.4, "moves": 5}}


def test_targets_table_marks_met_missed_and_unmeasured():
    res = {"run": {"smoke": False}, "records": [rec("teacher", 0.929, 400, 5.0)],
           "notebooks": {"00_a": {"seconds": 400, "peak_rss_mb": 900}}, "widgets": {}}
    rows = {d: ok for d, _, ok in report.check_targets(res)}
    assert rows["teacher ≥ 93.0 % on the full 10k test set"] is False
    assert rows["each notebook ≤ 5 min at defaults (≤ 1 min smoke)"] is False
    assert rows["peak memory ≤ 1.5 GB per notebook"] is True
    assert rows["slider median response ≤ 1 s per move"] is None
    assert "MISSED" in report.targets_table(res)


def test_table_takes_ratios_against_the_baseline_in_the_same_runtime():
    text = report.table([rec("teacher", 0.93, 400, 4.0), rec("half", 0.92, 100, 2.0),
                         rec("teacher", 0.93, 800, 8.0, "onnxruntime"),
                         rec("int8", 0.93, 200, 2.0, "onnxruntime")])
    half = next(line for line in text.splitlines() if line.strip().startswith("half"))
    int8 = next(line for line in text.splitlines() if line.strip().startswith("int8"))
    assert "4.00" in half and "-1.00" in half
    assert "4.00" in int8 and "+0.00" in int8


def test_pruning_targets_compare_against_the_teacher_of_the_same_notebook():
    records = [dict(rec("teacher", 0.937, 400, 10.0), notebook="01_pruning"),
               dict(rec("structured-50-finetuned", 0.934, 100, 4.0), notebook="01_pruning"),
               dict(rec("unstructured-50-finetuned", 0.930, 400, 10.0), notebook="01_pruning")]
    res = {"run": {"smoke": False}, "records": records, "notebooks": {}, "widgets": {}}
    rows = {d: (m, ok) for d, m, ok in report.check_targets(res)}
    assert rows["01: 50 % structured + fine-tune ≥ 2x faster at batch 1"] == ("2.50x", True)
    assert rows["01: 50 % structured + fine-tune within 0.5 pt"][1] is True
    assert rows["01: 50 % unstructured, masked fine-tune within 0.3 pt"][1] is False


def test_pareto_front_keeps_only_models_no_other_beats_on_both_axes():
    from edgelab import report
    recs = [{"name": n, "bytes": b, "accuracy": a} for n, b, a in
            [("big", 100, 0.94), ("mid", 30, 0.93), ("worse", 40, 0.92), ("tiny", 1, 0.90),
             ("tie-but-bigger", 35, 0.93)]]
    assert [r["name"] for r in report.pareto_front(recs, "bytes")] == ["tiny", "mid", "big"]


def test_seed_claims_are_written_per_notebook_and_assembled_by_key(tmp_path):
    report.write_notebook_results("00_baseline", [], results_dir=tmp_path,
                                  seed_claims={"4": report.seed_claim("resnet18(pretrained=True)",
                                                                      {"then": "refused"})})
    report.write_notebook_results("01_pruning", [], results_dir=tmp_path,
                                  seed_claims={"1": report.seed_claim("prune_model", {"x": 1})})
    res = report.assemble({}, {}, results_dir=tmp_path, out=tmp_path / "results.json")
    assert list(res["seed_claims"]) == ["1", "4"]
    assert res["seed_claims"]["4"] == {"ran": "resnet18(pretrained=True)",
                                       "happened": {"then": "refused"}, "notebook": "00_baseline"}
    row = dict((d, (m, ok)) for d, m, ok in report.check_targets(res))
    assert row["the blog's seven claims each shown by a cell that runs it"] == \
        ("2 of 7 (missing 2, 3, 5, 6, 7)", False)


def test_a_seed_claim_needs_a_known_key_and_an_outcome(tmp_path):
    with pytest.raises(ValueError, match="keyed 1, 2, 3, 4, 5, 6, 7"):
        report.write_notebook_results("00_baseline", [], results_dir=tmp_path,
                                      seed_claims={"8": report.seed_claim("x", "y")})
    with pytest.raises(ValueError, match="what ran and what happened"):
        report.seed_claim("x", None)


def test_a_table_is_text_when_printed_and_html_in_jupyterlab():
    t = report.table([rec("teacher", 0.93, 400, 4.0), rec("half", 0.92, 100, 2.0)])
    assert str(t).splitlines()[0].split()[:3] == ["name", "runtime", "accuracy"]
    assert repr(t) == str(t)
    html = t._repr_html_()
    assert html.count("<tr") == 3 and '<tr style="font-weight:bold">' in html   # header, 2 rows
    assert "text-align:right" in html and "&lt;" not in html


def _timed(name, arch, b1, b64=10.0, runtime="torch"):
    return {"name": name, "arch": arch, "runtime": runtime, "threads": 2, "latency_b1_ms": b1,
            "latency_b64_ms": b64}


def test_same_architecture_latencies_must_agree_within_ten_percent():
    ok = [_timed("kd-s0", "k1", 1.00), _timed("scratch-s0", "k1", 1.08), _timed("teacher", "k2", 9.0)]
    assert report.same_architecture_problems(ok) == []
    bad = ok + [_timed("kd-s1", "k1", 1.30)]
    found = report.same_architecture_problems(bad)
    assert len(found) == 1 and "kd-s1" in found[0] and "kd-s0" in found[0] and "batch 1" in found[0]
    # another runtime or no key: not the same architecture
    assert report.same_architecture_problems(ok + [_timed("x", "k1", 5.0, runtime="onnxruntime"),
                                                   _timed("y", "", 5.0)]) == []


def test_same_architecture_check_raises_at_defaults_and_warns_in_smoke(tmp_path):
    bad = [_timed("a", "k", 1.0), _timed("b", "k", 2.0)]
    with pytest.raises(ValueError, match="same-architecture"):
        report.write_notebook_results("99_x", bad, smoke=False, results_dir=tmp_path)
    assert not (tmp_path / "99_x.json").exists()      # nothing half-written
    with pytest.warns(UserWarning, match="smoke mode"):
        report.check_same_architecture(bad, smoke=True)


def test_table_shows_the_spread_of_interleaved_rounds():
    r = dict(_timed("teacher", "k", 2.0), latency_b1_spread_ms=[1.9, 2.1], accuracy=0.9,
             test_images=100, bytes=1000)
    assert "2.00 ±5%" in str(report.table([r]))


def test_table_highlights_the_ratios_that_meet_a_bar_and_refuses_unknown_columns():
    t = _timed("teacher", "k", 4.0, 40.0)
    fast = _timed("small", "j", 1.0, 30.0)
    for r, n in ((t, 1000), (fast, 100)):
        r.update(accuracy=0.9, test_images=100, bytes=n)
    tab = report.table([t, fast], bars={"×smaller": 5, "×faster b1": 3})
    html = tab._repr_html_()
    assert html.count("#cfe8d8") == 2 and "×smaller ≥ 5" in html      # 10x smaller and 4x faster
    assert report.table([t, fast], bars={"×faster b64": 2})._repr_html_().count("#cfe8d8") == 0
    with pytest.raises(ValueError, match="ratio columns"):
        report.table([t], bars={"accuracy": 0.9})


def _pipeline(pick_acc, pick_bytes, pick_lat):
    teacher = dict(rec("teacher", 0.937, 40_000_000, 3.0, "onnxruntime"), notebook="06_pipeline")
    pick = dict(rec("small-int8", pick_acc, pick_bytes, pick_lat, "onnxruntime"),
                notebook="06_pipeline", tags=["deployable"])
    return {"run": {"smoke": False}, "records": [teacher, pick], "notebooks": {}, "widgets": {}}


def test_both_deployable_bars_are_targets_and_judge_the_shipped_model_on_test():
    rows = {d: ok for d, _, ok in report.check_targets(_pipeline(0.935, 250_000, 0.15))}
    assert rows["06: deployable model " + report.bar_text("frontier")] is True
    assert rows["06: deployable model " + report.bar_text("deployable")] is True
    # 0.5 pt below the teacher: the first version's bar still, the frontier bar no more
    rows = {d: ok for d, _, ok in report.check_targets(_pipeline(0.932, 250_000, 0.15))}
    assert rows["06: deployable model " + report.bar_text("frontier")] is False
    assert rows["06: deployable model " + report.bar_text("deployable")] is True
    # 16x faster but only 80x smaller: the frontier bar asks for both
    rows = {d: ok for d, _, ok in report.check_targets(_pipeline(0.937, 500_000, 0.18))}
    assert rows["06: deployable model " + report.bar_text("frontier")] is False


def test_meets_reads_validation_or_test_and_refuses_an_unknown_bar():
    t = dict(rec("teacher", 0.937, 40_000_000, 3.0), val_accuracy=0.930)
    m = dict(rec("m", 0.930, 200_000, 0.1), val_accuracy=0.929)
    assert report.against(m, t)["smaller"] == 200 and report.against(m, t)["faster"] == 30
    assert report.meets(m, t, "frontier", "val") and not report.meets(m, t, "frontier", "test")
    with pytest.raises(ValueError, match="frontier"):
        report.meets(m, t, "fast")
