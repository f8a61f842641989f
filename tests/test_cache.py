from edgelab import cache


def test_a_result_is_computed_once_per_key_and_again_when_an_input_changes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"acc": [0.9, 0.8]}

    a = cache.cached_json("scan", ["sha-a", 500], compute, tmp_path)
    b = cache.cached_json("scan", ["sha-a", 500], compute, tmp_path)
    c = cache.cached_json("scan", ["sha-b", 500], compute, tmp_path)
    assert a == b == c == {"acc": [0.9, 0.8]} and len(calls) == 2
    assert len(list(tmp_path.glob("scan-*.json"))) == 2
