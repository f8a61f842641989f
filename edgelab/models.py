"""The teacher, the student, and checkpoints that are verified before they are loaded."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

from . import paths
from .data import CLASSES, INPUT_SHAPE
from .paths import atomic_write_bytes

__all__ = ["SHIPPED_SHA256", "teacher", "Student", "student",
           "SeparableBlock", "student_dw", "structured_student", "structured_teacher", "lowrank_teacher", "ARCHS", "build", "sha256_file",
           "save_checkpoint", "read_card", "load_checkpoint", "reinit"]



def __getattr__(name):
    # ``CHECKPOINT_DIR`` was an import-time constant; it is now ``paths.checkpoints_dir()``,
    # resolved when read so a patched ``paths.ROOT`` reaches it.
    if name == "CHECKPOINT_DIR":
        return paths.checkpoints_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# sha256 of every shipped checkpoint, so a swapped file *and* card are both caught.
SHIPPED_SHA256: dict[str, str] = {
    "teacher": "6fa9d1ddcaefa32a4ca528e9ec49533aa79739d4d0d3f340c6dd0afbd90d0d54",
    "pruned50": "305db8bf4d0e8b2adeb270141430ae6ea35f35637675f498a920f92b0a037fd7",
    "lowrank55": "3a84864a7ed519030490d04285df24e371c938c99f6208a949f463b98b4333b9",
    "student-kd-s0": "89bd2b993e73ef53957781dd5cd9eff6c48fe9df1772ac4d02c0b8bb5957a1e0",
    "student-scratch-s0": "81756b649191fb914a4e9567bda0578f00ff5c7cb00bf6667f82f62a0467e612",
    "student-kd-s1": "ef13075d38bbc7d63e8f1f043c253fa40e193559817fb89ff43f8c09352efe72",
    "student-kd-s2": "d446a5660be9a4610ca54a40298659262278d5fd8726a13f5077492a26be73ae",
    "student-scratch-s1": "2830742e4906c1e7109115647ef38065bf0962ba4caa28abd9d7570a4ba187e8",
    "student-scratch-s2": "20e0c5fe0842b0d2d51417381befe9e2026963d362c203941331fcb9def1e972",
    "student-kd-s3": "bf075a152cf396fdc356be6b05d5421025b7167003b99b321f6c2fdb9174b538",
    "student-kd-s4": "dc3be92b810f5cb75653f5121b27e7c67c86681466936bfc1b074696b10b7355",
    "student-scratch-s3": "b39f921afb42a2bb66063c2cb49911e84f7b44b38f899f499e2c8d7d0c2a6e00",
    "student-scratch-s4": "4d580160eb06f8913b53bb1f49c5d6f1482a0d4dc5bea8f0aa69a1f309edaa07",
    "pruned50-scratch": "1c94bc659ce9623bc0ea1e8d84bc338cd16d5e839a8ff41286c3e90f330c7dfe",
    "student-dw-kd": "990dbbbfcbd01f5ccda8bbe2ba1c241333908592ad758f91c7111545ce1d6126",
    "student-kd-int8teacher": "0a6c554ae649297a4b7c1eeca43dc7ddb85cc2f8b372df32b2983c79c1f833dd",
    "student-kd-long-s0": "86299e20f74e4396badb1ad18761194aa4b5cf8bb9701492eee4fcbabb5f7e60",
    "student-kd-long-s1": "9b5b6457273e78f5a3968b2fd3924e125868d0dc82cdd5f29443eb392a8cf9f9",
    "student-kd-long-s2": "fda032db7f610b9adc34f095f3b307c9347594a8099f222c8222d10f0f55113e",
    "student-kd-pruned50": "b1f0a87a1273e34a3fca03447f1ddb512e7f8443a48f07733c66f5dd3ec8fa10",
    "student-pruned25-kd-s0": "2b44589d030bd56c6b8cb583df9ea4645518a3ab4e720fa6afc00d3ac8d85bfb",
    "student-pruned25-kd-s1": "70d81e05f3e9e08fde66955d14248b9a4cb5de62009b495010229da11993a782",
    "student-pruned25-kd-s2": "4808bc1e701d3c28d1e63c58e52dfd59e67b1105b30751b277a4cb9c050490b0",
    "student-kd-long-s3": "41217c2da2b8bc4cb2d186c7a5df4668d2c6455fbdfca37f01743c972c60c419",
    "student-pruned25-kd-s3": "0cf2b14a9c8d1dc02befb3e478ae49084e81c2a48f0675c8a496287071340273",
    "student-kd-long-s4": "1512d9520f4f547a9af953074adf061cf7f6450b63f31dd4e60cd10a1fb3d50e",
    "student-pruned25-kd-s4": "caaf1b5d2639d231631b2b6c6cfac2c65fbd01b68ca554021cb7a33e6076d9d4",
    "student-kd-T2": "7bcce59f3c27136cc68d873352b4a5d6340c173e02cb416b9d32df326495457e",
    "student-kd-T8": "e8cc28eb404c3c35d4a1653bde9bfd13b1a71f8df305f2a2854b3da33631ef6e",
    "student-kd-a05": "b2c92cc0cf4ae3a9429773f69e487dbd86de0a71aadeebc5508aea4e267be604",
    "student-ls": "9bde79d77ec03533d7c0d6e4ac7a4eb65fb6296a1350ef83e0391b10cb20e1a4",
    "student-kd-shift": "409302e22cb97cecb50b7b1e84ec4ac1ca6741d2f84ad187df698d6a4e20f112",
    "student-qad-s0": "c4895cdc813b23fa3eeb475a635c703b87d62e9892e0d3a7dd4c2832d63a6e54",
    "student-fitnets-s0": "ced4d1ece3d9cdfb29450d2b79e56c620a9e3f6d077dd84509ac7acc683c53f3",
    "student-fitnets-s1": "db14564250f9572c4c792a307e09a0b35b92ea9d24b74c5a59641a54bf6dfbb2",
    "student-fitnets-s2": "66a6b0c7b45744c61a2fd209c836e6badc53b6301db23351b1e2846c109b492b",
    "student-fitnets-s3": "89e720013dd0cd8bb99bbd165caa2128269bc53a9bf0744e042a1a36f0faad50",
    "student-fitnets-s4": "d34534bf056f23963f5e9e6606aff166a9df1accfb246e21860db8c80bf3bc47",
}


def teacher(num_classes: int = len(CLASSES)) -> nn.Module:
    """torchvision's ResNet18 with a stem for 1x28x28 images.

    The ImageNet stem (7x7 stride 2, then max-pool) shrinks 28x28 to 7x7 before the first block
    and tops out near 91.7 % here; dropping both strides (no max-pool) costs ~950 s per epoch on
    2 cores. A 3x3 stride-1 conv that keeps the max-pool is the middle road: the blocks see
    14x14, 7x7, 4x4, 2x2, an epoch takes ~6 min on 2 cores and 4-5 epochs pass 93 %.
    """
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return model


class SeparableBlock(nn.Module):
    """MobileNet's depthwise-separable convolution (Howard et al., 2017): a 3x3 filter per
    channel, then a 1x1 mix across channels, with a residual shortcut as in the Student."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                                nn.BatchNorm2d(c_in), nn.ReLU(inplace=True))
        self.pw = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out)))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.pw(self.dw(x)) + self.shortcut(x))


def _basic_block(c_in: int, c_out: int, stride: int) -> nn.Module:
    """torchvision's BasicBlock, with a 1x1 projection on the shortcut when the block widens or
    strides, so that the sum is always of equal shapes."""
    down = None
    if stride != 1 or c_in != c_out:
        down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
    return BasicBlock(c_in, c_out, stride=stride, downsample=down)


class Student(nn.Module):
    """A small ResNet: the seed's idea with real residual blocks and channels that match. A stem,
    then one stage per width, each but the first halving the resolution. ``separable=True``
    builds the stages from depthwise-separable blocks instead of 3x3 BasicBlocks: about 9x fewer
    weights per block at the same width, spent on wider stages."""

    def __init__(self, widths=(16, 32, 64), blocks: int = 2, num_classes: int = len(CLASSES),
                 separable: bool = False):
        super().__init__()
        if not widths or any(w < 1 for w in widths) or blocks < 1:
            raise ValueError(f"widths must be positive and blocks >= 1, got {widths}, {blocks}")
        self.widths, self.blocks = tuple(widths), blocks
        make = SeparableBlock if separable else _basic_block
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            stages.append(nn.Sequential(*[make(c_in if b == 0 else c_out, c_out,
                                               2 if i and b == 0 else 1) for b in range(blocks)]))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def student(widths=(16, 32, 64), blocks: int = 2) -> nn.Module:
    return Student(widths, blocks)


def student_dw(widths=(64, 128, 256), blocks: int = 2) -> nn.Module:
    """The depthwise-separable student, at about the Student's parameter count."""
    return Student(widths, blocks, separable=True)


def structured_student(rate: float, base: nn.Module | None = None, widths=(16, 32, 64),
                       blocks: int = 2) -> nn.Module:
    """The Student with ``rate`` of every layer's channels removed; shapes depend on the rate
    alone, as for ``structured_teacher``."""
    from .prune import structured
    return structured(base if base is not None else student(widths, blocks), rate,
                      torch.zeros(1, *INPUT_SHAPE))


def structured_teacher(rate: float, base: nn.Module | None = None) -> nn.Module:
    """The teacher with ``rate`` of every layer's channels removed (see edgelab.prune).

    Channel counts depend on the rate alone, so pruning an untrained teacher gives the right
    shapes to load a pruned checkpoint into; pass the trained ``base`` to choose real channels."""
    from .prune import structured
    return structured(base if base is not None else teacher(), rate, torch.zeros(1, *INPUT_SHAPE))


def lowrank_teacher(base: nn.Module | None = None, energy: float | None = None,
                    ranks: dict[str, int] | None = None) -> nn.Module:
    """The teacher with its 3x3 convolutions factored (see edgelab.lowrank): by ``energy`` from
    the trained ``base``, or to the given ``ranks`` (a card's; shapes only when no ``base``)."""
    from . import lowrank
    if base is None:
        if ranks is None:
            raise ValueError("a low-rank teacher without a trained base needs its ranks")
        return lowrank.factorize(teacher(), ranks=ranks, init=False)
    return lowrank.factorize(base, ranks=ranks, energy=None if ranks else energy)


def reinit(model: nn.Module) -> nn.Module:
    """Fresh weights in place, as torchvision's ResNet initialises them (Kaiming-normal convs,
    BN weight 1 and bias 0, Linear's default): a pruned architecture trained from scratch."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
    return model


ARCHS = {
    "resnet18": lambda base=None: teacher(),
    "resnet18-lowrank": lambda base=None, **kw: lowrank_teacher(base=base, **kw),
    "student": lambda base=None, **kw: base if base is not None else student(**kw),
    "student-dw": lambda base=None, **kw: student_dw(**kw),
    "student-structured": lambda base=None, **kw: structured_student(base=base, **kw),
    "resnet18-structured": lambda base=None, **kw: structured_teacher(base=base, **kw),
}


def build(arch: dict, base: nn.Module | None = None) -> nn.Module:
    """A model from a card's ``arch`` entry, e.g. ``{"name": "student", "widths": [16, 32, 64]}``.

    ``base`` is a trained model that a derived architecture starts from (a pruned teacher)."""
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    if arch.get("name") not in ARCHS:
        raise ValueError(f"unknown architecture {arch.get('name')!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch["name"]](base=base, **kwargs)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _paths(name_or_path) -> tuple[Path, Path]:
    p = Path(name_or_path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    elif not p.parent.parts or str(p.parent) == ".":
        p = paths.checkpoints_dir() / p.name
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(model: nn.Module, name_or_path, card: dict) -> dict:
    """Write ``<name>.safetensors`` and its card ``<name>.json`` (with the sha256), atomically."""
    from safetensors.torch import save

    weights_path, card_path = _paths(name_or_path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state)
    atomic_write_bytes(weights_path, blob)
    card = dict(card, file=weights_path.name, sha256=hashlib.sha256(blob).hexdigest(),
                bytes=len(blob))
    atomic_write_bytes(card_path, (json.dumps(card, indent=2) + "\n").encode())
    return card


def read_card(name_or_path) -> dict:
    _, card_path = _paths(name_or_path)
    if not card_path.is_file():
        raise FileNotFoundError(f"no checkpoint card at {card_path}; train it with "
                                f"`python -m edgelab.train --help`")
    return json.loads(card_path.read_text())


def load_checkpoint(name_or_path, model: nn.Module | None = None) -> nn.Module:
    """Verify the file's sha256 against its card (and the shipped list), then load it safely.

    safetensors holds only tensors, so loading cannot run code; the model comes from the card's
    ``arch`` unless one is passed in.
    """
    from safetensors.torch import load_file

    weights_path, _ = _paths(name_or_path)
    card = read_card(name_or_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"checkpoint {weights_path} is missing (its card is there)")
    digest = sha256_file(weights_path)
    expected = {card["sha256"]}
    stem = weights_path.stem
    if weights_path.parent == paths.checkpoints_dir() and stem in SHIPPED_SHA256:
        expected.add(SHIPPED_SHA256[stem])
    if len(expected) != 1 or digest not in expected:
        raise ValueError(f"{weights_path}: sha256 {digest} does not match the expected "
                         f"{' / '.join(sorted(expected))}; the file is corrupt or was replaced. "
                         "Restore it with `git checkout -- data/checkpoints` or retrain it.")
    if model is None:
        model = build(card["arch"])
    model.load_state_dict(load_file(weights_path))
    return model.eval()
