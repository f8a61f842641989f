import pytest
import torch
import torch.nn as nn

from edgelab import check, counts, models, prune, sizes


X1 = torch.zeros(1, 1, 28, 28)


def tiny():
    torch.manual_seed(0)
    return models.student(widths=(8, 16), blocks=1).eval()


def test_magnitude_mask_keeps_exactly_the_largest_magnitudes():
    w = torch.tensor([0.1, -0.9, 0.3, -0.05, 0.7, -0.2])
    assert prune.magnitude_mask(w, 0.5).tolist() == [False, True, True, False, True, False]
    assert prune.magnitude_threshold(w, 0.5) == pytest.approx(0.2)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.5"])
def test_rate_outside_zero_to_one_is_refused_with_the_valid_range(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune.unstructured(tiny(), rate)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune.structured(tiny(), rate, X1)


def test_a_model_without_conv_or_linear_cannot_be_pruned():
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        prune.unstructured(nn.Sequential(nn.ReLU(), nn.Flatten()), 0.5)


def test_global_pruning_hits_the_rate_overall_and_per_layer_in_every_layer():
    m = tiny()
    g = prune.unstructured(m, 0.6, scope="global")
    assert prune.sparsity(g) == pytest.approx(0.6, abs=1e-4)
    layer = prune.unstructured(m, 0.6, scope="layer")
    for mod in prune.prunable_layers(layer).values():
        assert (mod.weight == 0).float().mean().item() == pytest.approx(0.6, abs=0.02)
    assert prune.sparsity(m) == 0  # the original is untouched


def test_masks_keep_pruned_weights_at_zero_through_training_and_without_them_they_regrow():
    m = prune.unstructured(tiny(), 0.5)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def steps(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return prune.sparsity(model)

    unmasked = prune.remove_masks(prune.clone(m))
    assert steps(m) == pytest.approx(0.5, abs=1e-4)
    assert steps(unmasked) < 0.01


def test_remove_masks_leaves_a_plain_dense_model_of_the_same_size():
    m = tiny()
    p = prune.remove_masks(prune.unstructured(m, 0.5))
    assert set(p.state_dict()) == set(m.state_dict())
    assert abs(len(sizes.state_dict_bytes(p)) - len(sizes.state_dict_bytes(m))) < 64


def test_structured_pruning_halves_channels_and_keeps_the_classifier_outputs():
    m = models.teacher()
    p = prune.structured(m, 0.5, X1)
    assert p.conv1.out_channels == 32 and p.layer4[1].conv2.out_channels == 256
    assert p.fc.out_features == 10 and p(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    ratio = counts.count_params(p) / counts.count_params(m)
    assert 0.2 < ratio < 0.3  # half the channels on both sides of each conv: about a quarter


def test_pruned_checkpoint_loads_into_the_shape_rebuilt_from_its_rate(tmp_path):
    t = models.structured_teacher(0.25)
    models.save_checkpoint(t, tmp_path / "t", {"arch": {"name": "resnet18-structured", "rate": 0.25}})
    loaded = models.load_checkpoint(tmp_path / "t")
    x = torch.randn(1, 1, 28, 28)
    assert torch.equal(loaded(x), t.eval()(x))


def test_checkers_accept_the_reference_and_explain_typical_mistakes(capsys):
    assert check.magnitude_mask(prune.magnitude_mask) is prune.magnitude_mask
    assert check.magnitude_threshold(prune.magnitude_threshold) is prune.magnitude_threshold

    def compares_with_threshold(w, rate):
        return w.abs() > prune.magnitude_threshold(w, rate)

    def signed(w, rate):
        keep = w.numel() - round(rate * w.numel())
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[w.flatten().topk(keep).indices] = True
        return mask.view_as(w)

    def keeps_rate(w, rate):
        return prune.magnitude_mask(w, 1 - rate if rate else 0.0)

    def truncates(w, rate):
        k = int(rate * w.numel())
        return w.abs().flatten().kthvalue(k).values.item() if k else 0.0

    def not_done(w, rate):
        raise NotImplementedError
    capsys.readouterr()
    for wrong, hint in [(compares_with_threshold, "by counting"), (signed, "abs(w)"),
                        (keeps_rate, "fraction removed")]:
        assert check.magnitude_mask(wrong) is prune.magnitude_mask
        assert hint in capsys.readouterr().out
    assert check.magnitude_threshold(truncates) is prune.magnitude_threshold
    assert "use round()" in capsys.readouterr().out
    assert check.magnitude_mask(not_done) is prune.magnitude_mask
    assert "not attempted" in capsys.readouterr().out


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75, 0.9, 0.93])
def test_structured_pruning_keeps_each_layers_share_of_channels(rate):
    m = models.Student().eval()
    before = {n: l.out_channels for n, l in m.named_modules() if isinstance(l, nn.Conv2d)}
    p = prune.structured(m, rate, X1)
    after = {n: l.out_channels for n, l in p.named_modules() if isinstance(l, nn.Conv2d)}
    assert after == {n: int(c * (1 - rate)) for n, c in before.items()}
    assert p(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_structured_pruning_shrinks_the_model_as_the_rate_grows():
    m = models.Student().eval()
    params = [counts.count_params(prune.structured(m, r, X1)) for r in (0.5, 0.8, 0.9, 0.93)]
    assert params == sorted(params, reverse=True) and len(set(params)) == len(params)


def test_a_rate_that_would_empty_a_layer_names_the_layer_and_the_highest_rate_that_works():
    # torch-pruning alone skips such a group and returns the model unpruned without a word.
    with pytest.raises(ValueError, match=r"leave layer 'stem.0' \(Conv2d, 16 output channels\) "
                                         r"with none; the highest rate .* is 0.93"):
        prune.structured(models.Student(), 0.94, X1)


def test_structured_pruning_refuses_an_unknown_importance():
    with pytest.raises(ValueError, match=r"importance must be one of \('l1', 'l2'\)"):
        prune.structured(tiny(), 0.5, X1, importance="taylor")
