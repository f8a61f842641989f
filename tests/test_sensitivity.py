import pytest
import torch
import torch.nn as nn

from edgelab import counts, models, prune, sensitivity, sizes


def tiny():
    torch.manual_seed(0)
    return models.student(widths=(8, 16), blocks=1).eval()


def test_sensitivity_scan_restores_weights_and_the_plan_meets_the_target():
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    rates = [0.0, 0.5, 0.9]
    scan = sensitivity.sensitivity_scan(m, rates, x, y, progress=False)
    assert set(scan) == set(prune.prunable_layers(m)) and all(len(v) == 3 for v in scan.values())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    numels = {n: mod.weight.numel() for n, mod in prune.prunable_layers(m).items()}
    plan = sensitivity.sensitivity_plan(scan, rates, numels, target=0.5)
    overall = sum(plan[n] * numels[n] for n in plan) / sum(numels.values())
    assert overall == pytest.approx(0.5, abs=0.01)


def test_the_sensitivity_scan_prunes_exactly_round_rate_n_weights_even_with_ties():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 0.2, 0.2, 0.2], [0.2, 0.3, 0.4, 0.5]]))
    seen = []
    model = nn.Sequential(layer)
    model.register_forward_pre_hook(lambda m, a: seen.append(int((layer.weight == 0).sum())))
    sensitivity.sensitivity_scan(model, [0.25, 0.5], torch.zeros(1, 4), torch.zeros(1, dtype=torch.long),
                           progress=False)
    assert seen == [2, 4]   # the threshold rule '>' would have zeroed 1 and then 5
    assert layer.weight.min().item() == pytest.approx(0.1)   # restored afterwards


def test_rate_sweep_prunes_the_exact_count_on_and_off_the_slider_steps_and_leaves_the_model():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    sweep = sensitivity.RateSweep(model, x, y, latency_runs=1)
    n = sum(m.weight.numel() for m in prune.prunable_layers(model).values())
    for rate in (0.5, 0.33, 0.0):   # 0.33 is off the 0.05 steps: a kthvalue instead
        at = sweep.at(rate, "unstructured")
        zeros = sum(int((m.weight == 0).sum()) for m in prune.prunable_layers(sweep.work).values())
        assert zeros == round(rate * n) and at["bytes"] == sizes.saved_size(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="'unstructured' or 'structured'"):
        sweep.at(0.5, "channels")


def test_rate_sweep_keeps_the_last_three_structured_models():
    sweep = sensitivity.RateSweep(tiny(), torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long),
                            latency_runs=1)
    half = sweep.structured(0.5)
    for rate in (0.25, 0.1, 0.5):
        sweep.structured(rate)
    assert list(sweep.pruned) == [0.25, 0.1, 0.5] and sweep.structured(0.5) is half
    sweep.structured(0.3)
    assert list(sweep.pruned) == [0.1, 0.5, 0.3]
    assert sweep.at(0.5, "structured")["params"] == counts.count_params(half)
