import pytest

from edgelab import targets


def rec(name, acc, b, lat, runtime="torch"):
    return {"notebook": None, "name": name, "tags": [], "runtime": runtime, "accuracy": acc,
            "test_images": 10000, "params": b // 4, "nonzero_params": b // 4, "macs": 10 * b,
            "bytes": b, "gzip_bytes": b, "latency_b1_ms": lat, "latency_b1_p90_ms": lat,
            "latency_b64_ms": 10 * lat, "latency_b64_p90_ms": 10 * lat, "threads": 2}


def _pipeline(pick_acc, pick_bytes, pick_lat):
    teacher = dict(rec("teacher", 0.937, 40_000_000, 3.0, "onnxruntime"), notebook="06_pipeline")
    pick = dict(rec("small-int8", pick_acc, pick_bytes, pick_lat, "onnxruntime"),
                notebook="06_pipeline", tags=["deployable"])
    return {"run": {"smoke": False}, "records": [teacher, pick], "notebooks": {}, "widgets": {}}


def test_targets_table_marks_met_missed_and_unmeasured():
    res = {"run": {"smoke": False}, "records": [rec("teacher", 0.929, 400, 5.0)],
           "notebooks": {"00_a": {"seconds": 400, "peak_rss_mb": 900}}, "widgets": {}}
    rows = {d: ok for d, _, ok in targets.check_targets(res)}
    assert rows["teacher ≥ 93.0 % on the full 10k test set"] is False
    assert rows["each notebook ≤ 5 min at defaults (≤ 1 min smoke)"] is False
    assert rows["peak memory ≤ 1.5 GB per notebook"] is True
    assert rows["slider median response ≤ 1 s per move"] is None
    assert "MISSED" in targets.targets_table(res)


def test_pruning_targets_compare_against_the_teacher_of_the_same_notebook():
    records = [dict(rec("teacher", 0.937, 400, 10.0), notebook="01_pruning"),
               dict(rec("structured-50-finetuned", 0.934, 100, 4.0), notebook="01_pruning"),
               dict(rec("unstructured-50-finetuned", 0.930, 400, 10.0), notebook="01_pruning")]
    res = {"run": {"smoke": False}, "records": records, "notebooks": {}, "widgets": {}}
    rows = {d: (m, ok) for d, m, ok in targets.check_targets(res)}
    assert rows["01: 50 % structured + fine-tune ≥ 2x faster at batch 1"] == ("2.50x", True)
    assert rows["01: 50 % structured + fine-tune within 0.5 pt"][1] is True
    assert rows["01: 50 % unstructured, masked fine-tune within 0.3 pt"][1] is False


def test_both_deployable_bars_are_targets_and_judge_the_shipped_model_on_test():
    rows = {d: ok for d, _, ok in targets.check_targets(_pipeline(0.935, 250_000, 0.15))}
    assert rows["06: deployable model " + targets.bar_text("frontier")] is True
    assert rows["06: deployable model " + targets.bar_text("deployable")] is True
    # 0.5 pt below the teacher: the first version's bar still, the frontier bar no more
    rows = {d: ok for d, _, ok in targets.check_targets(_pipeline(0.932, 250_000, 0.15))}
    assert rows["06: deployable model " + targets.bar_text("frontier")] is False
    assert rows["06: deployable model " + targets.bar_text("deployable")] is True
    # 16x faster but only 80x smaller: the frontier bar asks for both
    rows = {d: ok for d, _, ok in targets.check_targets(_pipeline(0.937, 500_000, 0.18))}
    assert rows["06: deployable model " + targets.bar_text("frontier")] is False


def test_meets_reads_validation_or_test_and_refuses_an_unknown_bar():
    t = dict(rec("teacher", 0.937, 40_000_000, 3.0), val_accuracy=0.930)
    m = dict(rec("m", 0.930, 200_000, 0.1), val_accuracy=0.929)
    assert targets.against(m, t)["smaller"] == 200 and targets.against(m, t)["faster"] == 30
    assert targets.meets(m, t, "frontier", "val") and not targets.meets(m, t, "frontier", "test")
    with pytest.raises(ValueError, match="frontier"):
        targets.meets(m, t, "fast")


def test_the_edge_bundle_target_is_missed_while_one_runtime_fails_on_a_pi_core():
    def edge_rec(runtime, matches):
        return {"notebook": "05_edge_runtimes", "name": f"{runtime}-int8",
                "bundle": {"runtime": runtime, "arm64_by_cpu": {
                    cpu: {"match": m} for cpu, m in zip(("cortex-a72", "cortex-a76"), matches)}}}

    res = {"records": [edge_rec("onnxruntime", (True, True)), edge_rec("litert", (True, True))]}
    assert targets._edge_bundles(res) == ("cores equal x86: onnxruntime 2/2, litert 2/2", True)
    res["records"].append(edge_rec("executorch", (False, False)))
    text, met = targets._edge_bundles(res)
    assert "executorch 0/2" in text and not met
    assert targets._edge_bundles({"records": []}) is None
