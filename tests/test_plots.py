from edgelab import plots


def test_pareto_front_keeps_only_models_no_other_beats_on_both_axes():
    recs = [{"name": n, "bytes": b, "accuracy": a} for n, b, a in
            [("big", 100, 0.94), ("mid", 30, 0.93), ("worse", 40, 0.92), ("tiny", 1, 0.90),
             ("tie-but-bigger", 35, 0.93)]]
    assert [r["name"] for r in plots.pareto_front(recs, "bytes")] == ["tiny", "mid", "big"]
