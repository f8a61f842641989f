import pytest
from scipy import stats as sps

from edgelab import stats


def test_paired_comparison_matches_scipys_paired_t_test_and_gives_its_interval():
    a, b = [93.1, 92.9, 93.4, 93.0, 93.2], [92.8, 92.7, 93.0, 92.9, 92.6]
    r = stats.paired_comparison(a, b)
    ref = sps.ttest_rel(a, b)
    assert r["t"] == pytest.approx(ref.statistic) and r["p_t"] == pytest.approx(ref.pvalue)
    lo, hi = ref.confidence_interval(0.95)
    assert r["ci"] == (pytest.approx(lo), pytest.approx(hi))
    assert r["mean"] == pytest.approx(0.32)


def test_the_permutation_p_value_cannot_go_below_two_over_two_to_the_n():
    r = stats.paired_comparison([1, 2, 3, 4, 5], [0, 1, 2, 3, 4])   # every seed +1
    assert r["p_perm"] == pytest.approx(2 / 32) == r["p_perm_min"]
    three = stats.paired_comparison([1, 2, 3], [0, 1, 2])
    assert three["p_perm"] == pytest.approx(0.25)


def test_no_difference_gives_p_one_and_an_interval_around_zero():
    r = stats.paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert r["mean"] == 0 and r["p_perm"] == 1.0 and r["p_t"] == 1.0 and r["ci"] == (0.0, 0.0)


def test_unpaired_or_too_short_lists_are_refused():
    with pytest.raises(ValueError, match="two equally long lists of at least 2"):
        stats.paired_comparison([1, 2], [1])
    with pytest.raises(ValueError, match="at least 2"):
        stats.paired_comparison([1], [1])
