"""Knowledge distillation: a student learns from a teacher's softened outputs as well as labels.

The loss (Hinton et al., 2015) mixes two terms:

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * CE(student, y)

T > 1 spreads the teacher's probabilities so the student sees which wrong classes the teacher
finds plausible ("a shirt looks more like a T-shirt than a boot"); T^2 keeps the soft term's
gradients the same size as T changes. The teacher is frozen: eval mode, no gradients.

Training a student re-reads the same 55k images every epoch, so the teacher's logits are computed
once for every training image, plain and mirrored (the only augmentation), and cached on disk keyed
by the teacher checkpoint's sha256.

A second signal (FitNets, Romero et al. 2015, https://arxiv.org/abs/1412.6550): one intermediate
feature map of the student, through a trainable 1x1 conv adapter, regresses the teacher's feature
map of the same spatial size (``FeatureHint``, ``HintBatches``, ``hint_loss_fn``). The pair is
``HINT_LAYERS``: the student's middle stage (FitNets guides the middle) and the one teacher stage at
its 14x14, so no pooling blurs the target and the teacher, which must run on every batch for a
feature map, stops after its first stage. The adapter only exists in training.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import cache, data

__all__ = ["check_temperature", "check_alpha", "soften", "loss_terms", "kd_loss",
           "seed_loss", "loss_fn", "teacher_logits", "DistillBatches",
           "OnlineDistillBatches", "HINT_LAYERS", "FeatureTap", "FeatureHint", "HintBatches",
           "hint_loss_fn"]


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
    static, per-channel 8-bit weights, uint8 activations, 512 calibration images), as the shipped
    student-kd-int8teacher was trained: the logits a Pi running that teacher would produce. On an
    x86 CPU without VNNI, ONNX Runtime's kernels can saturate on that file
    (``runtime.u8s8_saturates``), so logits computed there can differ from a Pi's."""
    from .models import load_checkpoint, read_card

    stem = f"distill/{Path(name).name}{'-int8' if int8 else ''}-{split}"
    parts = {"teacher": read_card(name)["sha256"], "int8": bool(int8), "split": split}
    if int8:   # full 8-bit weights, as the shipped student-kd-int8teacher was trained
        parts["reduce_range"] = False
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
    session = runtime.session(runtime.ort_static(fp32, path, data.calibration_set(512),
                                                 reduce_range=False))

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


# Where the hint goes for the Student (widths 16/32/64 at 28, 14, 7 px) and the 28x28 ResNet18
# teacher (layer1..4 at 14, 7, 4, 2 px). FitNets guides the student's middle layer; the student's
# middle stage, ``stages.1``, is 14x14, and the only teacher stage of that size is ``layer1``: no
# pooling is needed, and the teacher's forward can stop after its first stage, about a quarter of
# its MACs, which is what each training step pays for the teacher.
HINT_LAYERS = {"student": "stages.1", "teacher": "layer1"}


class _Stop(Exception):
    """Raised by a stopping tap: the rest of the forward pass is not needed."""


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
        raise ValueError(f"{type(model).__name__} has no module {name!r}; some of its modules: "
                         f"{names[:12]}") from None


class FeatureTap:
    """A forward hook on the module ``name`` of ``model`` that keeps its latest output. With
    ``stop=True`` the forward pass ends there (``__call__`` returns the feature map): a teacher
    asked for an early feature does not run its later layers."""

    def __init__(self, model: nn.Module, name: str, stop: bool = False):
        self.model, self.name, self.stop, self.output = model, name, stop, None
        self.handle = _module(model, name).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.output = output
        if self.stop:
            raise _Stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.output = None
        try:
            self.model(x)
        except _Stop:
            pass
        if self.output is None:
            raise RuntimeError(f"{self.name!r} was not run by {type(self.model).__name__}'s "
                               "forward pass")
        return self.output

    def remove(self) -> None:
        self.handle.remove()


@torch.no_grad()
def _probe(model: nn.Module, name: str, shape) -> torch.Size:
    """The shape of ``name``'s output for one input of ``shape``, batch norms left untouched."""
    was_training = model.training
    tap = FeatureTap(model.eval(), name, stop=True)
    try:
        return tap(torch.zeros(1, *shape, device=next(model.parameters()).device)).shape
    finally:
        tap.remove()
        model.train(was_training)


class FeatureHint(nn.Module):
    """Training-only wrapper: the student, a hook on its ``student_layer`` and a 1x1 conv adapter
    from its channels to those of the teacher's ``teacher_layer``. ``forward`` returns the
    student's logits and keeps the adapted map in ``feature``; ``detach()`` removes the hook and
    returns the plain student, the only part that ships (the adapter exists to let a narrower
    student match a wider teacher, not to run at inference)."""

    def __init__(self, student: nn.Module, teacher: nn.Module,
                 student_layer: str = HINT_LAYERS["student"],
                 teacher_layer: str = HINT_LAYERS["teacher"], input_shape=(1, 28, 28)):
        super().__init__()
        s, t = _probe(student, student_layer, input_shape), _probe(teacher, teacher_layer,
                                                                   input_shape)
        if len(s) != 4 or len(t) != 4:
            raise ValueError(f"hints need (N, C, H, W) feature maps; {student_layer!r} gives "
                             f"{tuple(s)}, {teacher_layer!r} gives {tuple(t)}")
        if s[2:] != t[2:]:
            raise ValueError(f"{student_layer!r} is {s[2]}x{s[3]} but the teacher's "
                             f"{teacher_layer!r} is {t[2]}x{t[3]}: pick layers of the same "
                             "spatial size (a 1x1 adapter maps channels only)")
        self.student = student
        self.adapter = nn.Conv2d(s[1], t[1], kernel_size=1, bias=False)
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.tap = FeatureTap(student, student_layer)

    def forward(self, x):
        logits = self.student(x)
        self.feature = self.adapter(self.tap.output)
        return logits

    def detach(self) -> nn.Module:
        """Remove the hook; the plain student, without the adapter."""
        self.tap.remove()
        return self.student


class HintBatches(DistillBatches):
    """``DistillBatches`` whose targets also hold the teacher's ``layer`` feature map for exactly
    these images (mirrored where they were), the teacher run on each batch up to that layer only:
    the cached logits cannot give an intermediate map."""

    def __init__(self, batches: data.Batches, logits: torch.Tensor, teacher: nn.Module,
                 layer: str = HINT_LAYERS["teacher"]):
        super().__init__(batches, logits)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.tap = FeatureTap(self.teacher, layer, stop=True)

    @torch.no_grad()
    def transform(self, x, y):
        labels, logits = y
        return x, (labels, logits, self.tap(x))

    def remove(self) -> None:
        self.tap.remove()


def hint_loss_fn(hint: FeatureHint, T: float = 4.0, alpha: float = 0.9, beta: float = 1.0):
    """``kd_loss`` (T, alpha) plus ``beta`` times the mean squared error between the student's
    adapted map (``hint.feature``, set by the forward pass just run) and the teacher's; a
    ``loss_fn(student_logits, (labels, teacher_logits, teacher_feature))`` for ``train.fit``."""
    T, alpha = check_temperature(T), check_alpha(alpha)
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0:
        raise ValueError(f"beta weighs the feature hint and must be a number >= 0, got {beta!r}")

    def loss(student_logits, target):
        labels, teacher_logits, teacher_feature = target
        return (kd_loss(student_logits, teacher_logits, labels, T, alpha)
                + beta * F.mse_loss(hint.feature, teacher_feature.detach()))
    return loss
