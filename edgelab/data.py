"""Fashion-MNIST: find it on disk, verify it, load it into tensors.

The four IDX files are looked up in ``$EDGELAB_DATA``, ``data/fashion-mnist/`` and the Debian
package's ``/usr/share/datasets/fashion-mnist/``. Hashes are of the *decompressed* bytes, because
Debian's ``.gz`` files differ byte-wise from upstream's while their contents are identical.

``python -m edgelab.data download`` is the only code path in edgelab that touches the network.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import paths
from .paths import DataNotFoundError

__all__ = ["INPUT_SHAPE", "FILES", "CLASSES", "VAL_SIZE", "SPLIT_SEED",
           "DataCorruptError", "search_dirs", "find_data_dir",
           "read_verified", "parse_idx", "FashionMNIST", "split_indices", "load", "normalize",
           "Batches", "loader", "tensors", "calibration_set", "download"]


# sha256 of the decompressed IDX bytes (identical for the upstream and the Debian files).
FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Mean and std of the 60k training pixels in [0, 1]; the usual Fashion-MNIST normalisation.
MEAN, STD = 0.2860, 0.3530

# One image as the models see it: channels, height, width.
INPUT_SHAPE = (1, 28, 28)

VAL_SIZE = 5000
SPLIT_SEED = 0


class DataCorruptError(ValueError):
    pass


def search_dirs() -> list[Path]:
    """Where to look, in order (``edgelab.paths.data_search_dirs``, resolved now)."""
    return paths.data_search_dirs()


def _file_in(d: Path, name: str) -> Path | None:
    for candidate in (d / f"{name}.gz", d / name):
        if candidate.is_file():
            return candidate
    return None


def find_data_dir() -> Path:
    """The first search directory that holds all four files."""
    dirs = search_dirs()
    for d in dirs:
        if all(_file_in(d, name) for name in FILES):
            return d
    looked = "\n".join(f"  - {d}" for d in dirs)
    raise DataNotFoundError(
        "Fashion-MNIST not found. Looked for the four files "
        f"({', '.join(n + '.gz' for n in FILES)}) in:\n{looked}\n"
        "Get them one of three ways:\n"
        "  1. Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
        "  2. Download (network, explicit): python -m edgelab.data download\n"
        "  3. Copy the four files into data/fashion-mnist/ (or a folder named by $EDGELAB_DATA)."
    )


def read_verified(path: Path, name: str) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataCorruptError(f"{path}: not a readable gzip file ({e}); expected the "
                                   f"decompressed sha256 {FILES[name]}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILES[name]:
        raise DataCorruptError(
            f"{path} is corrupt: its decompressed sha256 is {digest}, it should be {FILES[name]}. "
            "Delete it and get the file again (see `python -m edgelab.data --help`).")
    return raw


def parse_idx(raw: bytes) -> np.ndarray:
    """IDX: two zero bytes, a type code (0x08 = uint8), the number of dims, big-endian sizes."""
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataCorruptError("not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@dataclass
class FashionMNIST:
    """All of Fashion-MNIST as uint8 tensors (47 MB), normalised lazily batch by batch."""
    train_images: torch.Tensor  # (55000, 28, 28) uint8, after the validation split
    train_labels: torch.Tensor
    val_images: torch.Tensor    # (5000, 28, 28) uint8
    val_labels: torch.Tensor
    test_images: torch.Tensor   # (10000, 28, 28) uint8
    test_labels: torch.Tensor
    source: Path

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; valid: 'train', 'val', 'test'")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


_CACHE: dict[Path, FashionMNIST] = {}


def split_indices(n: int = 60000) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation indices: a fixed permutation, the same on every machine."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[VAL_SIZE:], perm[:VAL_SIZE]


def load() -> FashionMNIST:
    """Find, verify and parse the data; split off a fixed validation set from the training set."""
    d = find_data_dir()
    if d in _CACHE:
        return _CACHE[d]
    arrays = {name: parse_idx(read_verified(_file_in(d, name), name)) for name in FILES}
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"].copy())
    labels = torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64))
    train_idx, val_idx = split_indices(len(images))
    ds = FashionMNIST(
        train_images=images[train_idx], train_labels=labels[train_idx],
        val_images=images[val_idx], val_labels=labels[val_idx],
        test_images=torch.from_numpy(arrays["t10k-images-idx3-ubyte"].copy()),
        test_labels=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        source=d,
    )
    _CACHE[d] = ds
    return ds


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), zero mean and unit std over the training set."""
    return ((images_u8.float() / 255.0 - MEAN) / STD).unsqueeze(1)


class Batches:
    """Normalised (images, labels) batches over uint8 tensors.

    Cheaper than a DataLoader over single items: slicing a tensor is one copy per batch. Random
    horizontal flips (clothes are left-right symmetric) and, with ``shift``, random translations
    of up to ``shift`` pixels each way (padded with black) are the augmentations."""

    def __init__(self, images, labels, batch_size=128, shuffle=False, flip=False, seed=0,
                 shift: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(shift, int) or isinstance(shift, bool) or not 0 <= shift < 14:
            raise ValueError(f"shift is a whole number of pixels in [0, 13], got {shift!r}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.flip, self.shift = batch_size, shuffle, flip, shift
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            flip = (torch.rand(len(idx), generator=self.generator) < 0.5 if self.flip
                    else torch.zeros(len(idx), dtype=torch.bool))
            x, y = self.batch(idx, flip)
            if self.shift:
                x = shifted(x, torch.randint(-self.shift, self.shift + 1, (len(idx), 2),
                                             generator=self.generator))
            yield self.transform(x, y)

    def batch(self, idx: torch.Tensor, flip: torch.Tensor):
        """The batch of images ``idx``, those where ``flip`` is set mirrored left-right."""
        x = normalize(self.images[idx])
        x[flip] = x[flip].flip(-1)
        return x, self.labels[idx]

    def transform(self, x, y):
        """The batch after augmentation; subclasses add targets computed from the final images."""
        return x, y


def shifted(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) moved by its (dy, dx) in ``offsets``, black filling in."""
    s = int(offsets.abs().max()) if len(offsets) else 0
    if s == 0:
        return x
    black = float(normalize(torch.zeros(1, 1, 1, dtype=torch.uint8)).item())
    padded = F.pad(x, (s, s, s, s), value=black)
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, s - dy:s - dy + h, s - dx:s - dx + w]
    return out


def loader(split: str, batch_size: int = 128, shuffle: bool | None = None, flip: bool = False,
           limit: int | None = None, seed: int = 0, shift: int = 0) -> Batches:
    """Batches of one split; training shuffles by default, the first ``limit`` images if given."""
    images, labels = load().split(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if shuffle is None:
        shuffle = split == "train"
    return Batches(images, labels, batch_size, shuffle=shuffle, flip=flip, seed=seed,
                   shift=shift)


def tensors(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 1, 28, 28) and labels (N,) of one split."""
    images, labels = load().split(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return normalize(images), labels


def calibration_set(n: int = 512, seed: int = 0) -> torch.Tensor:
    """``n`` normalised training images, balanced over the classes, for quantization calibration."""
    if n < 1:
        raise ValueError(f"a calibration set needs at least 1 image, got n={n}")
    images, labels = load().split("train")
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in range(len(CLASSES))]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    # Round-robin over the classes: image i comes from class i % 10.
    picks = [per_class[i % len(CLASSES)][i // len(CLASSES)] for i in range(n)]
    return normalize(images[torch.stack(picks)])


def download(dest: Path) -> None:
    """Fetch the four files through torchvision's downloader (network) and verify them."""
    from torchvision.datasets.utils import download_url
    mirror = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        download_url(mirror + f"{name}.gz", str(dest))
        read_verified(dest / f"{name}.gz", name)
    print(f"Fashion-MNIST verified in {dest}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m edgelab.data",
                                description="Find, verify or (explicitly) download Fashion-MNIST.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="find the data and verify the four hashes (no network)")
    dl = sub.add_parser("download", help="download the four files (the only network access)")
    dl.add_argument("--dest", type=Path,
                    help="default: data/fashion-mnist/ in the repository")
    args = p.parse_args(argv)
    try:
        if args.cmd == "download":
            download(args.dest or paths.repo_root() / "data" / "fashion-mnist")
        else:
            ds = load()
            print(f"Fashion-MNIST OK in {ds.source}: train {len(ds.train_images)}, "
                  f"val {len(ds.val_images)}, test {len(ds.test_images)}")
    except (DataNotFoundError, DataCorruptError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
