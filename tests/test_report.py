import json

import pytest

from edgelab import latency, report, targets
from edgelab.records import Record


def rec(name, acc, b, lat, runtime="torch"):
    return {"notebook": None, "name": name, "tags": [], "runtime": runtime, "accuracy": acc,
            "test_images": 10000, "params": b // 4, "nonzero_params": b // 4, "macs": 10 * b,
            "bytes": b, "gzip_bytes": b, "latency_b1_ms": lat, "latency_b1_p90_ms": lat,
            "latency_b64_ms": 10 * lat, "latency_b64_p90_ms": 10 * lat, "threads": 2}


def _timed(name, arch, b1, b64=10.0, runtime="torch"):
    return {"name": name, "arch": arch, "runtime": runtime, "threads": 2, "latency_b1_ms": b1,
            "latency_b64_ms": b64}


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
    row = dict((d, (m, ok)) for d, m, ok in targets.check_targets(res))
    assert row["the blog's seven claims each shown by a cell that runs it"] == \
        ("2 of 7 (missing 2, 3, 5, 6, 7)", False)


def test_a_seed_claim_needs_a_known_key_and_an_outcome(tmp_path):
    with pytest.raises(ValueError, match="keyed 1, 2, 3, 4, 5, 6, 7"):
        report.write_notebook_results("00_baseline", [], results_dir=tmp_path,
                                      seed_claims={"8": report.seed_claim("x", "y")})
    with pytest.raises(ValueError, match="what ran and what happened"):
        report.seed_claim("x", None)


def test_same_architecture_check_raises_at_defaults_and_warns_in_smoke(tmp_path):
    bad = [_timed("a", "k", 1.0), _timed("b", "k", 2.0)]
    with pytest.raises(ValueError, match="same-architecture"):
        report.write_notebook_results("99_x", bad, smoke=False, results_dir=tmp_path)
    assert not (tmp_path / "99_x.json").exists()      # nothing half-written
    with pytest.warns(UserWarning, match="smoke mode"):
        latency.check_same_architecture(bad, smoke=True)


def test_a_record_is_written_as_the_json_its_plain_dict_would_be(tmp_path):
    plain = dict(rec("teacher", 0.93, 400, 5.0), arch="k", correct=None)   # as measure writes it
    a = report.write_notebook_results("00_a", [plain], results_dir=tmp_path / "a")
    b = report.write_notebook_results("00_a", [Record.from_dict(plain)], results_dir=tmp_path / "b")
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    assert json.loads(b.read_text())["records"][0]["notebook"] == "00_a"
