import pytest
import torch
import torch.nn as nn

from edgelab import lowrank, models
from edgelab.counts import count_params


def tiny():
    """A stem (1 input channel: never factored), two 3x3 convs, a 1x1 conv and a classifier."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


@pytest.mark.parametrize("layer, x", [
    (nn.Linear(20, 6), torch.randn(3, 20)),
    (nn.Linear(6, 20, bias=False), torch.randn(3, 6)),
    (nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.randn(2, 8, 9, 9)),
    (nn.Conv2d(3, 40, 3, padding=2, dilation=2, bias=False), torch.randn(2, 3, 9, 9)),
], ids=["linear-wide", "linear-tall", "conv-stride2", "conv-dilated-tall"])
def test_factor_at_full_rank_reproduces_the_layer_and_keeps_its_geometry(layer, x):
    f = lowrank.factor(layer, lowrank.full_rank(layer))
    assert f.rank == lowrank.full_rank(layer)
    torch.testing.assert_close(f(x), layer(x), atol=1e-5, rtol=1e-4)
    if isinstance(layer, nn.Conv2d):
        first, second = f
        assert (first.stride, first.padding, first.dilation) == (layer.stride, layer.padding,
                                                                   layer.dilation)
        assert second.kernel_size == (1, 1) and first.out_channels == second.in_channels


def test_svd_matches_torch_and_truncation_error_is_the_dropped_singular_values():
    w = torch.randn(12, 5) @ torch.randn(5, 30)  # rank 5 of 12: zero singular values too
    layer = nn.Linear(30, 12, bias=False)
    layer.weight.data.copy_(w)
    u, s, vh = lowrank.svd(layer)
    torch.testing.assert_close(s, torch.linalg.svdvals(w), atol=1e-4, rtol=1e-4)
    assert (s[:-1] >= s[1:]).all()
    for r in (1, 3, 5):  # Eckart-Young: the best rank-r error is the norm of what is dropped
        with torch.no_grad():
            w_r = lowrank.factor(layer, r)(torch.eye(30)).T
        assert torch.linalg.norm(w - w_r).item() == pytest.approx(s[r:].norm().item(), abs=1e-3)


def test_energy_rank_on_hand_made_singular_values():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # squares 9, 4, 1, 0: cumulative 9/14, 13/14, 1, 1
    assert [lowrank.energy_rank(s, e) for e in (0.1, 9 / 14, 0.7, 13 / 14, 0.95, 1.0)] == \
        [1, 1, 2, 2, 3, 3]


def test_break_even_rank_is_where_the_factors_outgrow_the_layer():
    fc = nn.Linear(512, 10)  # the teacher's classifier: 5,130 parameters
    assert lowrank.break_even_rank(fc) == pytest.approx(5120 / 522)
    assert lowrank.factored_params(fc, 9) < count_params(fc) < lowrank.factored_params(fc, 10)
    assert lowrank.factored_params(fc, 9) == count_params(lowrank.factor(fc, 9))
    conv = nn.Conv2d(64, 64, 3, bias=False)
    assert lowrank.break_even_rank(conv) == pytest.approx(64 * 576 / 640)


def test_plan_factors_only_the_layers_where_it_saves_parameters():
    model = tiny()
    assert list(lowrank.factorable_layers(model)) == ["2", "4"]  # not the stem, 1x1 or Linear
    with torch.no_grad():  # layer "4" becomes rank 1: factoring it saves a lot
        model[4].weight.copy_(torch.randn(16, 1, 1, 1) * torch.randn(1, 16, 3, 3))
    ranks = lowrank.plan(model, 0.99)
    assert ranks == {"4": 1}  # "2" needs nearly its full rank 16, above break-even 16*72/88
    assert lowrank.plan(model, 1.0) == {"4": 1}


def test_factorize_by_energy_equals_factorize_by_the_planned_ranks():
    model, x = tiny(), torch.randn(2, 1, 12, 12)
    svds = lowrank.decompose(model)
    ranks = lowrank.plan(model, 0.5, svds)
    by_energy = lowrank.factorize(model, energy=0.5, svds=svds)
    by_ranks = lowrank.factorize(model, ranks=ranks)
    assert lowrank.ranks_of(by_energy) == lowrank.ranks_of(by_ranks) == ranks and ranks
    torch.testing.assert_close(by_energy(x), by_ranks(x))
    assert count_params(by_energy) < count_params(model)
    assert isinstance(model[2], nn.Conv2d)  # the original is left as it was, and shares nothing
    ours = {t.data_ptr() for t in model.state_dict().values()}
    assert not ours & {t.data_ptr() for t in by_energy.state_dict().values()}


def test_factorize_needs_exactly_one_of_ranks_and_energy_and_known_layers():
    with pytest.raises(ValueError, match="either ranks"):
        lowrank.factorize(tiny())
    with pytest.raises(ValueError, match="either ranks"):
        lowrank.factorize(tiny(), ranks={"2": 1}, energy=0.5)
    with pytest.raises(KeyError, match="no layer 'conv9'"):
        lowrank.factorize(tiny(), ranks={"conv9": 1})


def test_ranks_of_round_trips_through_a_checkpoint_card(tmp_path):
    ranks = {"layer1.0.conv1": 7, "layer3.1.conv2": 100, "layer4.1.conv2": 200}
    arch = {"name": "resnet18-lowrank", "energy": 0.5, "ranks": ranks}
    model = models.build(arch).eval()  # shapes only: no trained base, no SVD
    assert lowrank.ranks_of(model) == ranks
    assert model.layer4[1].conv2[0].weight.shape == (200, 512, 3, 3)
    models.save_checkpoint(model, tmp_path / "lr", {"arch": arch})
    loaded = models.load_checkpoint(tmp_path / "lr")
    x = torch.randn(2, 1, 28, 28)
    assert lowrank.ranks_of(loaded) == ranks and torch.equal(loaded(x), model(x))


def test_a_lowrank_teacher_without_base_or_ranks_is_refused():
    with pytest.raises(ValueError, match="needs its ranks"):
        models.build({"name": "resnet18-lowrank", "energy": 0.5})


@pytest.mark.parametrize("energy", [0, -0.1, 1.01, 2, True, "0.5", None])
def test_energy_outside_zero_to_one_is_refused_with_the_valid_range(energy):
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        lowrank.energy_rank(torch.ones(3), energy)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        lowrank.plan(tiny(), energy)


@pytest.mark.parametrize("rank", [0, -1, 17, 2.5, True])
def test_rank_below_one_or_above_full_rank_is_refused_with_the_layers_full_rank(rank):
    conv = nn.Conv2d(8, 16, 3)  # 16 x 72: full rank 16
    with pytest.raises(ValueError, match="from 1 to this layer's full rank 16"):
        lowrank.factor(conv, rank)
    with pytest.raises(ValueError, match="full rank 16"):
        lowrank.factorize(nn.Sequential(conv), ranks={"0": rank})


def test_grouped_convolutions_and_other_layers_cannot_be_factored():
    with pytest.raises(ValueError, match="a depthwise convolution .* channel SVD does not apply"):
        lowrank.factor(nn.Conv2d(8, 8, 3, groups=8), 2)
    with pytest.raises(ValueError, match="layer '0': .*a grouped convolution"):
        lowrank.factorize(nn.Sequential(nn.Conv2d(8, 8, 3, groups=2)), ranks={"0": 2})
    with pytest.raises(TypeError, match="nn.Linear"):
        lowrank.full_rank(nn.BatchNorm2d(8))


def test_the_lowrank_target_needs_both_halving_the_parameters_and_staying_within_a_point():
    from edgelab import targets

    def rec(name, acc, params):
        return {"notebook": "04_low_rank", "name": name, "runtime": "torch", "accuracy": acc,
                "test_images": 10000, "params": params}
    target = dict(targets.TARGETS)["04: low-rank teacher ≥ 2x fewer parameters within 1 pt"]
    res = {"records": [rec("teacher", 0.937, 11_000_000),
                       rec("lowrank-55-finetuned", 0.931, 5_000_000)]}
    assert target(res) == ("2.20x fewer, +0.60 pt below", True)
    res["records"][1]["accuracy"] = 0.925
    assert target(res)[1] is False
    res["records"][1].update(accuracy=0.937, params=6_000_000)
    assert target(res)[1] is False
    assert target({"records": res["records"][:1]}) is None


def test_energy_sweep_matches_factorize_and_swaps_the_original_layers_back():
    torch.manual_seed(0)
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    sweep = lowrank.EnergySweep(model, x, y, latency_runs=1)
    low = sweep.at(0.5)
    ranks = lowrank.plan(model, 0.5)
    assert low["ranks"] == ranks and low["factored"] == len(ranks) > 0
    ref = lowrank.factorize(model, energy=0.5)
    assert low["params"] == count_params(ref) < sweep.original["params"]
    assert torch.allclose(sweep.model(ranks)(x), ref(x), atol=1e-5)
    assert sweep.at(1.0)["params"] == sweep.original["params"]
    assert sweep.at(0.5) is low   # each energy's numbers are kept
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_swap_layer_replaces_a_nested_or_a_top_level_submodule():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.ReLU())
    lowrank.swap_layer(model, "0.0", nn.Identity())
    lowrank.swap_layer(model, "1", nn.Tanh())
    assert isinstance(model[0][0], nn.Identity) and isinstance(model[1], nn.Tanh)
