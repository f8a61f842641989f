"""Knowledge distillation: a student learns from a teacher's softened outputs as well as labels.

The loss (Hinton et al., 2015) mixes two terms:

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * CE(student, y)

T > 1 spreads the teacher's probabilities so the student sees which wrong classes the teacher
finds plausible ("a shirt looks more like a T-shirt than a boot"); T^2 keeps the soft term's
gradients the same size as T changes. The teacher is frozen: eval mode, no gradients.

Training a student re-reads the same 55k images every epoch, so the teacher's logits are computed
once for every training image, plain and mirrored (the only augmentation), and cached on disk keyed
by the teacher checkpoint's sha256.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import cache, data

__all__ = ["check_temperature", "check_alpha", "soften", "loss_terms", "kd_loss",
           "seed_loss", "loss_fn", "teacher_logits", "DistillBatches",
           "OnlineDistillBatches"]


def check_temperature(T: float) -> float:
    if not isinstance(T, (int, float)) or isinstance(T, bool) or not T > 0:
        raise ValueError(f"temperature T must be a number > 0 (1 = the plain softmax; 2-8 is "
                         f"usual for distillation), got {T!r}")
    return float(T)


def check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha is the weight of the teacher's soft targets and must be in "
                         f"[0, 1] (0 = labels only, 1 = teacher only), got {alpha!r}")
    return float(alpha)


def soften(logits: torch.Tensor, T: float) -> torch.Tensor:
    """Class probabilities at temperature ``T``; T = 1 is the plain softmax."""
    return F.softmax(logits / check_temperature(T), dim=-1)


def loss_terms(student_logits, teacher_logits, labels, T: float = 4.0,
               alpha: float = 0.9) -> dict[str, torch.Tensor]:
    """The soft term (already scaled by T^2), the hard term and their alpha-mix."""
    T, alpha = check_temperature(T), check_alpha(alpha)
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1),
                    F.log_softmax(teacher_logits.detach() / T, dim=-1),
                    reduction="batchmean", log_target=True) * T * T
    hard = F.cross_entropy(student_logits, labels)
    return {"soft": soft, "hard": hard, "total": alpha * soft + (1 - alpha) * hard}


def kd_loss(student_logits, teacher_logits, labels, T: float = 4.0,
            alpha: float = 0.9) -> torch.Tensor:
    return loss_terms(student_logits, teacher_logits, labels, T, alpha)["total"]


def seed_loss(student_logits, teacher_logits, labels=None) -> torch.Tensor:
    """The seed blog's loss: KL of plain softmaxes, T = 1, labels ignored."""
    return F.kl_div(F.log_softmax(student_logits, dim=-1), F.softmax(teacher_logits, dim=-1),
                    reduction="batchmean")


def loss_fn(T: float = 4.0, alpha: float = 0.9):
    """A ``loss_fn(student_logits, (labels, teacher_logits))`` for ``edgelab.train.fit``."""
    T, alpha = check_temperature(T), check_alpha(alpha)

    def loss(student_logits, target):
        labels, teacher_logits = target
        return kd_loss(student_logits, teacher_logits, labels, T, alpha)
    return loss


def teacher_logits(name: str = "teacher", split: str = "train", limit: int | None = None,
                   progress: bool = True, int8: bool = False) -> torch.Tensor:
    """The teacher's logits for every image of ``split``: shape (N, 2, classes), [:, 0] for the
    image as stored and [:, 1] for it mirrored. Cached by ``edgelab.cache`` under
    build/cache/distill/, keyed by the checkpoint's sha256, the split, the flavour and the number
    of images.

    ``int8=True`` takes them from the teacher quantized to int8 in ONNX Runtime (02's recipe:
    static, per-channel weights, uint8 activations, 512 calibration images): the logits a Pi
    running that teacher would produce."""
    from .models import load_checkpoint, read_card

    stem = f"distill/{Path(name).name}{'-int8' if int8 else ''}-{split}"
    parts = {"teacher": read_card(name)["sha256"], "int8": bool(int8), "split": split}
    path = cache.path(stem, dict(parts, limit=limit), ".pt")
    everything = cache.path(stem, dict(parts, limit=None), ".pt")
    if limit is not None and not path.is_file() and everything.is_file():
        return torch.load(everything, weights_only=True)[:limit]   # the first N are a prefix

    def compute():
        teacher = load_checkpoint(name).eval()
        if int8:
            teacher = _ort_int8(teacher, cache.path(stem, parts, ".onnx"))
        images, _ = data.load().split(split)
        if limit is not None:
            images = images[:limit]
        out = []
        with torch.no_grad():
            for start in tqdm(range(0, len(images), 500), desc=f"{name} logits",
                              disable=not progress):
                x = data.normalize(images[start:start + 500])
                out.append(torch.stack([teacher(x), teacher(x.flip(-1))], dim=1))
        return torch.cat(out)
    return cache.cached_tensor(stem, dict(parts, limit=limit), compute)


def _ort_int8(model, path: Path):
    """``model`` as an ONNX Runtime int8 session, callable on a float tensor like a module."""
    from . import deploy, runtime

    fp32 = path.with_name(path.stem + "-fp32.onnx")
    deploy.export(model, fp32, data.tensors("val", limit=2)[0])
    session = runtime.session(runtime.ort_static(fp32, path, data.calibration_set(512)))

    def run(x):
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    return run


class DistillBatches(data.Batches):
    """Training batches whose targets are (labels, the teacher's logits for exactly these
    images, mirrored where the image was)."""

    def __init__(self, batches: data.Batches, logits: torch.Tensor):
        if len(logits) != len(batches.images):
            raise ValueError(f"{len(logits)} teacher logits for {len(batches.images)} images")
        if batches.shift:
            raise ValueError("cached teacher logits hold only the stored and the mirrored image; "
                             f"with shift={batches.shift} use OnlineDistillBatches, which runs "
                             "the teacher on every shifted batch")
        super().__init__(batches.images, batches.labels, batches.batch_size, batches.shuffle,
                         batches.flip)
        self.generator = batches.generator
        self.logits = logits

    def batch(self, idx, flip):
        x, y = super().batch(idx, flip)
        return x, (y, self.logits[idx, flip.long()])


class OnlineDistillBatches(data.Batches):
    """Training batches whose targets are (labels, the teacher's logits), the teacher run on each
    batch as augmented. Any augmentation works; each step pays a teacher forward pass."""

    def __init__(self, batches: data.Batches, teacher: torch.nn.Module):
        super().__init__(batches.images, batches.labels, batches.batch_size, batches.shuffle,
                         batches.flip, shift=batches.shift)
        self.generator = batches.generator
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def transform(self, x, y):
        return x, (y, self.teacher(x))
