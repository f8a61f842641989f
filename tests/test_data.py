import gzip
import hashlib

import pytest
import torch

from edgelab import data, paths


def test_the_four_files_match_their_decompressed_hashes():
    d = data.find_data_dir()
    for name, expected in data.FILES.items():
        raw = data.read_verified(data._file_in(d, name), name)
        assert hashlib.sha256(raw).hexdigest() == expected


def test_splits_have_the_documented_shapes_and_labels():
    ds = data.load()
    assert ds.train_images.shape == (55000, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.val_images.shape == (5000, 28, 28)
    assert ds.test_images.shape == (10000, 28, 28)
    assert set(ds.test_labels.tolist()) == set(range(10)) and len(data.CLASSES) == 10
    # every test class has exactly 1000 images
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10


def test_validation_split_is_deterministic_and_disjoint_from_training(monkeypatch):
    train_idx, val_idx = data.split_indices()
    assert torch.equal(train_idx, data.split_indices()[0])
    assert len(val_idx) == data.VAL_SIZE and len(set(train_idx.tolist()) | set(val_idx.tolist())) == 60000
    first = data.load()
    monkeypatch.setattr(data, "_CACHE", {})
    second = data.load()
    assert first is not second
    assert torch.equal(first.val_images, second.val_images)
    assert torch.equal(first.train_labels, second.train_labels)


def test_normalisation_gives_zero_mean_unit_std_on_training_images():
    x, _ = data.tensors("train", limit=20000)
    assert x.shape == (20000, 1, 28, 28)
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02


def test_batches_cover_a_split_once_and_flip_only_when_asked():
    batches = data.loader("test", batch_size=3000, shuffle=False)
    xs, ys = zip(*batches)
    assert len(batches) == 4 and sum(len(y) for y in ys) == 10000
    x_plain, _ = data.tensors("test", limit=3000)
    assert torch.equal(xs[0], x_plain)
    flipped = next(iter(data.loader("test", 3000, shuffle=False, flip=True)))[0]
    same = (flipped == x_plain).flatten(1).all(1)
    mirrored = (flipped == x_plain.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and 0.4 < mirrored.float().mean() < 0.6


def test_calibration_set_is_class_balanced_and_reproducible():
    a = data.calibration_set(100, seed=1)
    b = data.calibration_set(100, seed=1)
    assert a.shape == (100, 1, 28, 28) and torch.equal(a, b)
    with pytest.raises(ValueError, match="at least 1"):
        data.calibration_set(0)


def test_unknown_split_names_the_valid_ones():
    with pytest.raises(ValueError, match="'train', 'val', 'test'"):
        data.load().split("validation")


def test_missing_data_names_the_three_ways_to_get_it(no_data):
    with pytest.raises(paths.DataNotFoundError) as err:
        data.load()
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "python -m edgelab.data download" in msg
    assert "data/fashion-mnist/" in msg
    assert str(no_data / "env") in msg and str(no_data / "debian") in msg


def test_corrupt_file_names_the_file_and_the_hash_it_should_have(no_data):
    folder = no_data / "env"
    folder.mkdir(exist_ok=True)
    for name in data.FILES:
        (folder / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(8)))
    with pytest.raises(data.DataCorruptError) as err:
        data.load()
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert data.FILES["train-images-idx3-ubyte"] in msg


def test_env_folder_wins_over_the_debian_one(no_data, monkeypatch):
    folder = no_data / "env"
    folder.mkdir(exist_ok=True)
    for name in data.FILES:
        (folder / f"{name}.gz").write_bytes(b"")
    assert data.find_data_dir() == folder


def test_check_command_reports_missing_data_without_a_traceback(no_data, capsys):
    assert data.main(["check"]) == 1
    assert "apt-get install" in capsys.readouterr().err


def test_a_named_data_folder_that_does_not_exist_is_an_error_not_a_fallback(no_data, monkeypatch):
    monkeypatch.setenv("EDGELAB_DATA", str(no_data / "typo"))
    with pytest.raises(paths.DataNotFoundError, match=r"EDGELAB_DATA=.*typo is not a folder"):
        data.find_data_dir()


def test_shifted_moves_each_image_by_its_own_offset_and_fills_with_black():
    x = torch.arange(32.).reshape(2, 1, 4, 4)
    out = data.shifted(x, torch.tensor([[1, -1], [0, 0]]))
    black = float(data.normalize(torch.zeros(1, 1, 1, dtype=torch.uint8)))
    assert torch.equal(out[0, 0, 1:, :3], x[0, 0, :3, 1:])   # down one, left one
    assert torch.all(out[0, 0, 0] == black) and torch.all(out[0, 0, :, 3] == black)
    assert torch.equal(out[1], x[1])                         # a zero offset leaves it alone


def test_batches_shift_only_when_asked_and_refuse_a_bad_shift():
    images = torch.full((8, 28, 28), 200, dtype=torch.uint8)
    plain = next(iter(data.Batches(images, torch.zeros(8).long(), 8)))[0]
    moved = next(iter(data.Batches(images, torch.zeros(8).long(), 8, shift=3, seed=1)))[0]
    assert torch.equal(plain, data.normalize(images))
    assert not torch.equal(moved, plain)   # some border pixels turned black
    with pytest.raises(ValueError, match="shift is a whole number of pixels"):
        data.Batches(images, torch.zeros(8).long(), shift=-1)
