import pytest
import torch

from edgelab import data, paths


@pytest.fixture(autouse=True)
def _few_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """A world with no Fashion-MNIST anywhere: all three search places point at empty folders."""
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("EDGELAB_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(paths, "ROOT", tmp_path / "repo")   # every module asks paths at call time
    monkeypatch.setattr(paths, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(data, "_CACHE", {})
    return tmp_path
