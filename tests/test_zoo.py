"""Models from elsewhere (edgelab.zoo): torchvision architectures adapted to 1x28x28, and the
learner's own file with safetensors weights."""
import pytest
import torch
from safetensors.torch import save_file

from edgelab import zoo

OWN = '''
import torch.nn as nn

def build_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
'''


def test_a_torchvision_model_takes_one_channel_keeps_28x28_and_gives_ten_classes():
    m = zoo.torchvision_model("mobilenet_v3_small").eval()
    _, _, conv = zoo.first_conv(m)
    assert conv.in_channels == 1 and conv.stride == (1, 1)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_an_unknown_torchvision_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="mobilenet_v3_small"):
        zoo.torchvision_model("mobilenet_v9")


def test_own_model_loads_its_weights_from_safetensors(tmp_path):
    (tmp_path / "mine.py").write_text(OWN)
    reference = zoo.load_own_model(tmp_path / "mine.py")
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    loaded = zoo.load_own_model(tmp_path / "mine.py", tmp_path / "w.safetensors")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), reference(x))


def test_own_model_refuses_pickles_missing_factories_and_weights_that_do_not_fit(tmp_path):
    (tmp_path / "mine.py").write_text(OWN)
    with pytest.raises(ValueError, match="safetensors"):
        zoo.load_own_model(tmp_path / "mine.py", tmp_path / "w.pt")
    with pytest.raises(AttributeError, match="make_it"):
        zoo.load_own_model(tmp_path / "mine.py", factory="make_it")
    save_file({"other.weight": torch.zeros(3)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        zoo.load_own_model(tmp_path / "mine.py", tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="build_model"):
        zoo.load_own_model(tmp_path / "nope.py")
