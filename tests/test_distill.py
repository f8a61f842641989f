import pytest
import torch
import torch.nn.functional as F

from edgelab import check, check_pipeline, data, distill, paths, train

S = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.5, 0.3]])
T_ = torch.tensor([[4.0, 1.0, -2.0], [-1.0, 3.0, 2.0]])
Y = torch.tensor([0, 2])


def test_kd_loss_at_t1_and_alpha1_is_kl_of_the_plain_softmaxes():
    want = F.kl_div(F.log_softmax(S, 1), F.softmax(T_, 1), reduction="batchmean")
    assert torch.allclose(distill.kd_loss(S, T_, Y, T=1.0, alpha=1.0), want)


def test_soft_term_is_scaled_by_t_squared():
    T = 3.0
    kl = F.kl_div(F.log_softmax(S / T, 1), F.softmax(T_ / T, 1), reduction="batchmean")
    assert torch.allclose(distill.loss_terms(S, T_, Y, T=T)["soft"], T * T * kl)


def test_alpha_zero_is_plain_cross_entropy_and_alpha_mixes():
    assert torch.allclose(distill.kd_loss(S, T_, Y, T=4.0, alpha=0.0), F.cross_entropy(S, Y))
    terms = distill.loss_terms(S, T_, Y, T=2.0, alpha=0.3)
    assert torch.allclose(terms["total"], 0.3 * terms["soft"] + 0.7 * terms["hard"])


def test_the_teacher_gets_no_gradient():
    s, t = S.clone().requires_grad_(), T_.clone().requires_grad_()
    distill.kd_loss(s, t, Y).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_the_seed_loss_ignores_labels_and_temperature():
    assert torch.allclose(distill.seed_loss(S, T_, Y), distill.kd_loss(S, T_, Y, 1.0, 1.0))


@pytest.mark.parametrize("T", [0, -1.0, float("nan"), "4", True])
def test_bad_temperature_is_a_clear_error(T):
    with pytest.raises(ValueError, match="temperature T must be a number > 0"):
        distill.kd_loss(S, T_, Y, T=T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, None])
def test_alpha_outside_0_1_is_a_clear_error(alpha):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        distill.loss_fn(4.0, alpha)


def test_distill_batches_give_the_mirrored_logits_for_mirrored_images():
    n = 16
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, :, 0] = 255  # a bright left column: mirrored, it is on the right
    labels = torch.arange(n) % 10
    logits = torch.stack([torch.full((n, 3), 1.0), torch.full((n, 3), -1.0)], dim=1)
    logits[:, :, 0] = torch.arange(n, dtype=torch.float)[:, None]  # image index, both columns
    base = data.Batches(images, labels, batch_size=4, shuffle=True, flip=True, seed=3)
    seen = 0
    for x, (y, t) in distill.DistillBatches(base, logits):
        mirrored = x[:, 0, 0, -1] > x[:, 0, 0, 0]
        assert torch.equal(t[:, 1] < 0, mirrored)  # logits' column 1 = the mirrored image's
        assert torch.equal(labels[t[:, 0].long()], y)  # and they belong to these images
        seen += len(y)
    assert seen == n


def test_distill_batches_refuse_logits_of_another_length():
    base = data.Batches(torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4).long())
    with pytest.raises(ValueError, match="3 teacher logits for 4 images"):
        distill.DistillBatches(base, torch.zeros(3, 2, 10))


def test_teacher_logits_are_cached_by_the_checkpoints_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "cache_dir", lambda *parts: tmp_path.joinpath(*parts))
    first = distill.teacher_logits("teacher", "train", limit=4, progress=False)
    assert first.shape == (4, 2, 10)
    assert len(list((tmp_path / "distill").glob("teacher-train-*.pt"))) == 1

    def no_loading(*_a, **_k):
        raise AssertionError("the cached logits should have been used")
    monkeypatch.setattr("edgelab.models.load_checkpoint", no_loading)
    assert torch.equal(distill.teacher_logits("teacher", "train", limit=4), first)


def test_checker_accepts_the_reference_and_explains_a_missing_t_squared(capsys):
    assert check.kd_loss(distill.kd_loss, quiet=True) is distill.kd_loss

    def no_t_squared(s, t, y, T, alpha):
        soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t.detach() / T, 1),
                        reduction="batchmean")
        return alpha * soft + (1 - alpha) * F.cross_entropy(s, y)
    assert check.kd_loss(no_t_squared) is distill.kd_loss
    assert "multiply the soft term by T^2" in capsys.readouterr().out


def test_checker_names_the_reversed_kl_and_a_stub():
    def reversed_kl(s, t, y, T, alpha):
        p = F.log_softmax(s / T, 1)
        return alpha * T * T * (p.exp() * (p - F.log_softmax(t.detach() / T, 1))).sum(1).mean() \
            + (1 - alpha) * F.cross_entropy(s, y)
    outcome = check.run_cases("kd_loss", reversed_kl, check_pipeline._kd_cases())
    assert any("KL(student || teacher)" in f for f in outcome.failures)

    def stub(*_):
        raise NotImplementedError
    assert not check.run_cases("kd_loss", stub, check_pipeline._kd_cases()).attempted


def test_student_recipes_differ_only_in_the_loss():
    scratch, kd = dict(train.RECIPES["student-scratch"]), dict(train.RECIPES["student-kd"])
    assert "distill" in kd and "distill" not in scratch
    kd.pop("distill")
    assert kd == scratch


def test_per_seed_recipes_ship_one_checkpoint_per_seed():
    assert train.default_out("student-kd", 2).name == "student-kd-s2"
    assert train.default_out("teacher").name == "teacher"


def test_per_seed_recipes_can_start_from_the_same_seed_of_another():
    assert train.RECIPES["student-qad"]["init"].format(seed=3) == "student-kd-long-s3"
    assert train.RECIPES["student-qad"]["per_seed"]


def test_chain_recipes_differ_from_student_kd_only_in_the_teacher():
    kd = dict(train.RECIPES["student-kd"])
    for name, teacher in (("student-kd-pruned50", {"teacher": "pruned50"}),
                          ("student-kd-int8teacher", {"teacher": "teacher", "int8": True})):
        chain = dict(train.RECIPES[name])
        assert chain.pop("distill") == dict(kd["distill"], **teacher)
        assert chain == {k: v for k, v in kd.items() if k not in ("distill", "per_seed")}


def test_cached_logits_refuse_shifted_batches_and_the_online_teacher_sees_them():
    images = torch.randint(0, 255, (8, 28, 28), dtype=torch.uint8)
    base = data.Batches(images, torch.arange(8) % 10, batch_size=4, shuffle=True, flip=True,
                        shift=2, seed=0)
    with pytest.raises(ValueError, match="OnlineDistillBatches"):
        distill.DistillBatches(base, torch.zeros(8, 2, 10))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    for x, (y, t) in distill.OnlineDistillBatches(base, teacher):
        assert torch.allclose(t, teacher(x))   # the logits of exactly the images trained on
        assert not t.requires_grad


def _hint_pair():
    """A two-stage Student (stages.1 at 14x14, 8 channels) and a tiny teacher whose ``layer1``
    is 14x14 with 12 channels, then a head that must not run when only ``layer1`` is asked."""
    from collections import OrderedDict

    from edgelab import models
    torch.manual_seed(0)
    student = models.Student(widths=(4, 8), blocks=1)
    teacher = torch.nn.Sequential(OrderedDict(
        stem=torch.nn.Conv2d(1, 6, 3, stride=2, padding=1), layer1=torch.nn.Conv2d(6, 12, 3, 1, 1),
        pool=torch.nn.AdaptiveAvgPool2d(1), flat=torch.nn.Flatten(), fc=torch.nn.Linear(12, 10)))
    return student, teacher.eval()


def test_feature_hint_adapter_maps_student_channels_to_the_teachers():
    student, teacher = _hint_pair()
    hint = distill.FeatureHint(student, teacher, "stages.1", "layer1")
    assert (hint.adapter.in_channels, hint.adapter.out_channels) == (8, 12)
    assert hint.adapter.kernel_size == (1, 1)
    logits = hint(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10) and hint.feature.shape == (3, 12, 14, 14)


def test_feature_hint_names_unknown_layers_and_mismatched_sizes():
    student, teacher = _hint_pair()
    with pytest.raises(ValueError, match="no module 'stages.7'.*stages.1"):
        distill.FeatureHint(student, teacher, "stages.7", "layer1")
    with pytest.raises(ValueError, match="28x28 but the teacher's 'layer1' is 14x14"):
        distill.FeatureHint(student, teacher, "stages.0", "layer1")


def test_the_hint_loss_is_positive_and_trains_the_adapter_and_the_guided_layers():
    student, teacher = _hint_pair()
    hint = distill.FeatureHint(student, teacher, "stages.1", "layer1")
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    tap = distill.FeatureTap(teacher, "layer1", stop=True)
    with torch.no_grad():
        t_feat = tap(x)
    tap.remove()
    t_logits = teacher(x)
    loss = distill.hint_loss_fn(hint, T=4.0, alpha=0.9, beta=1.0)(hint(x), (y, t_logits, t_feat))
    assert loss.item() > 0
    loss.backward()
    for p in (hint.adapter.weight, student.stages[1][0].conv1.weight, student.stem[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    only_kd = distill.hint_loss_fn(hint, beta=0.0)(hint(x), (y, t_logits, t_feat))
    assert torch.allclose(only_kd, distill.kd_loss(hint(x), t_logits, y))
    with pytest.raises(ValueError, match="beta"):
        distill.hint_loss_fn(hint, beta=-1.0)


def test_hint_batches_give_the_teachers_map_of_exactly_these_images_without_its_head():
    student, teacher = _hint_pair()
    images = torch.randint(0, 255, (8, 28, 28), dtype=torch.uint8)
    base = data.Batches(images, torch.arange(8) % 10, batch_size=4, shuffle=True, flip=True, seed=0)
    logits = torch.randn(8, 2, 10)
    ran_head = []
    teacher.fc.register_forward_hook(lambda *_: ran_head.append(1))
    batches = distill.HintBatches(base, logits, teacher, "layer1")
    seen = list(batches)
    assert not ran_head                       # the teacher stopped after layer1
    batches.remove()
    assert not teacher.layer1._forward_hooks
    for x, (y, t_logits, t_feat) in seen:
        assert torch.allclose(t_feat, teacher.layer1(teacher.stem(x)))
        assert t_logits.shape == (4, 10) and not t_feat.requires_grad


def test_hooks_are_removed_after_training_and_the_student_is_plain():
    from edgelab import models
    student, teacher = _hint_pair()
    hint = distill.FeatureHint(student, teacher, "stages.1", "layer1")
    images = torch.randint(0, 255, (16, 28, 28), dtype=torch.uint8)
    base = data.Batches(images, torch.arange(16) % 10, batch_size=8, shuffle=True, flip=True)
    batches = distill.HintBatches(base, torch.randn(16, 2, 10), teacher, "layer1")
    train.fit(hint, batches, 1, lr=0.05, loss_fn=distill.hint_loss_fn(hint),
              device=torch.device("cpu"), progress=False)
    batches.remove()
    plain = hint.detach()
    assert plain is student
    assert not any(m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))
    fresh = models.Student(widths=(4, 8), blocks=1)
    fresh.load_state_dict(plain.state_dict())   # strict: no adapter keys
    assert {k for k in hint.state_dict() if not k.startswith("student.")} == {"adapter.weight"}


def test_student_fitnets_is_student_kd_plus_a_hint_on_layers_of_one_size():
    kd, fit = dict(train.RECIPES["student-kd"]), dict(train.RECIPES["student-fitnets"])
    hint = fit.pop("hint")
    assert fit == kd
    assert (hint["student"], hint["teacher"]) == (distill.HINT_LAYERS["student"],
                                                 distill.HINT_LAYERS["teacher"])
    assert hint["beta"] > 0
    assert train.default_out("student-fitnets", 3).name == "student-fitnets-s3"
