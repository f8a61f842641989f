import json

import pytest
import torch

from edgelab import models
from edgelab.counts import count_params


def test_teacher_maps_a_grayscale_28x28_batch_to_ten_logits():
    out = models.teacher().eval()(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10)


def test_teacher_has_resnet18_parameter_count_with_a_one_channel_stem():
    # torchvision resnet18 with 10 classes has 11,181,642; the 3x3 one-channel stem saves 8,832.
    assert count_params(models.teacher()) == 11_181_642 - 64 * 3 * 7 * 7 + 64 * 1 * 3 * 3


def test_student_is_residual_and_about_64_times_smaller():
    s = models.student()
    assert s(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert count_params(s) == 174_970
    blocks = [m for m in s.modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 6
    # the first block of each widened stage projects its shortcut so the sum has equal shapes
    assert [b.downsample is not None for b in blocks] == [False, False, True, False, True, False]


@pytest.mark.parametrize("widths", [(8,), (8, 24), (4, 12, 20, 40)])
def test_student_channels_match_for_any_widths(widths):
    s = models.student(widths=widths, blocks=1)
    assert s(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_student_rejects_empty_or_zero_widths():
    with pytest.raises(ValueError, match="widths"):
        models.student(widths=(16, 0))


def test_checkpoint_round_trip_restores_identical_outputs(tmp_path):
    s = models.student(widths=(4, 8), blocks=1).eval()
    card = models.save_checkpoint(s, tmp_path / "tiny",
                                  {"arch": {"name": "student", "widths": [4, 8], "blocks": 1}})
    assert (tmp_path / "tiny.safetensors").stat().st_size == card["bytes"]
    loaded = models.load_checkpoint(tmp_path / "tiny")
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), s(x))


def test_tampered_checkpoint_is_refused_with_the_expected_hash(tmp_path):
    s = models.student(widths=(4,), blocks=1)
    card = models.save_checkpoint(s, tmp_path / "tiny", {"arch": {"name": "student",
                                                                  "widths": [4], "blocks": 1}})
    blob = bytearray((tmp_path / "tiny.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "tiny.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=card["sha256"]):
        models.load_checkpoint(tmp_path / "tiny")


def test_missing_card_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="edgelab.train"):
        models.load_checkpoint(tmp_path / "nothing")


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet18"):
        models.build({"name": "vgg"})


def test_shipped_teacher_matches_its_card_and_the_code_registry():
    card = json.loads((models.CHECKPOINT_DIR / "teacher.json").read_text())
    assert models.SHIPPED_SHA256["teacher"] == card["sha256"]
    assert models.sha256_file(models.CHECKPOINT_DIR / "teacher.safetensors") == card["sha256"]
    assert card["test_accuracy"] >= 0.93 and card["test_images"] == 10000


def test_reinit_gives_fresh_torchvision_style_weights():
    import torch.nn as nn
    torch.manual_seed(0)
    m = models.student(widths=(8, 16), blocks=1)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(3.0)
    models.reinit(m)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) and not b.bias.any() for b in bns)
    conv = m.stages[1][0].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.3 * (2 / fan_out) ** 0.5


def test_depthwise_student_has_about_the_students_size_and_separable_convs():
    s = models.student_dw()
    assert s(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert 0.9 < count_params(s) / count_params(models.student()) < 1.2
    dw = [m for m in s.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(dw) == 6 and all(m.groups == m.in_channels == m.out_channels for m in dw)


def test_a_structured_student_keeps_the_rate_of_every_layers_channels():
    s = models.structured_student(0.25)
    convs = [m for m in s.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted({m.out_channels for m in convs}) == [12, 24, 48]
    assert s(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_a_student_recipe_with_a_base_starts_from_the_bases_weights():
    base = models.student()
    built = models.build({"name": "student"}, base=base)
    assert built is base
