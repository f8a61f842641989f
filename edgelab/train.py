"""Fit and evaluate models; ``python -m edgelab.train`` retrains the shipped checkpoints.

Every training here runs ``edgelab.loop.run``, the one loop, with the callbacks it needs.

Training runs on a GPU when one is there (CUDA or Apple's MPS), else on the CPU. Latency is never
measured here: that is ``edgelab.measure``'s job, always on the CPU, the edge stand-in.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data, loop, paths
from .models import build, load_checkpoint, read_card, save_checkpoint

__all__ = ["pick_device", "predict", "evaluate", "finetune_steps",
           "recalibrate_batchnorm", "sgd_one_cycle", "fit", "versions", "RECIPES", "default_out",
           "train_recipe"]


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, batches, device=None, progress: bool = False) -> torch.Tensor:
    """Logits for every image of ``batches``, in order, computed in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(x.to(device)).float().cpu()
           for x, _ in tqdm(batches, desc="eval", leave=False, disable=not progress)]
    model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, batches, device=None, progress: bool = False) -> float:
    """Top-1 accuracy as a fraction, from one pass in which each batch's labels and predictions
    are read together: ``evaluation.correct``, the evaluation ``measure`` uses too."""
    from .evaluation import correct

    return float(correct(model, batches, device, progress, inference=False).float().mean())


def finetune_steps(model, steps: int, lr: float = 0.002, batch_size: int = 64, seed: int = 1,
                   freeze_bn: bool = False, after_step=None, callbacks=()) -> nn.Module:
    """A short live fine-tune (SGD + momentum) for notebooks; trains ``model`` in place, on a
    GPU if there is one.

    Batches of 64 keep the backward pass's memory low (Binder has 2 GB) and, on the teacher,
    kept its accuracy where batches of 32 with frozen batch norms lost a point. ``freeze_bn``
    keeps the batch norms' running statistics fixed."""
    batches = data.loader("train", batch_size, flip=True, seed=seed)
    device = pick_device()
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    cbs = ([loop.FreezeBatchNorm(0)] if freeze_bn else []) + (
        [loop.AfterStep(after_step)] if after_step is not None else []) + list(callbacks)
    loop.run(model, batches, opt, steps=steps, device=device, callbacks=cbs)
    return model.cpu().eval()  # back on the CPU, where edgelab measures


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches, steps: int = 50) -> nn.Module:
    """Recompute every batch norm's running mean and variance as a plain average over ``steps``
    training batches (weights untouched). A short training leaves them stale when their momentum
    is small: torchvision's MobileNetV3 uses 0.01, tuned for long ImageNet runs."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None   # cumulative average over the batches seen
    model.train()
    for i, (x, _) in enumerate(batches):
        if i >= steps:
            break
        model(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    return model.eval()


def sgd_one_cycle(model, epochs: int, steps_per_epoch: int, lr: float = 0.1,
                  weight_decay: float = 5e-4, momentum: float = 0.9):
    """SGD with Nesterov momentum and a one-cycle schedule: few epochs, still well converged."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=steps_per_epoch)
    return opt, sched


def fit(model, batches, epochs: int, lr: float = 0.1, weight_decay: float = 5e-4,
        loss_fn=F.cross_entropy, device=None, resume: Path | None = None,
        progress: bool = True, after_step=None, callbacks=()) -> list[float]:
    """Train with SGD + one-cycle; returns the mean loss of each epoch.

    With ``resume`` set, the full training state is saved after every epoch and picked up again
    if the file exists, so a stopped run continues where it was (``loop.Resume``).
    ``after_step(model)`` runs after each optimizer step; ``callbacks`` go to ``loop.run``."""
    device = device or pick_device()
    model.to(device)
    opt, sched = sgd_one_cycle(model, epochs, len(batches), lr, weight_decay)
    cbs = ([loop.AfterStep(after_step)] if after_step is not None else []) + list(callbacks)
    cbs += [loop.Progress()] if progress else []
    cbs += [loop.Resume(resume)] if resume is not None else []
    return loop.run(model, batches, opt, epochs=epochs, scheduler=sched, loss_fn=loss_fn,
                    device=device, callbacks=cbs).history


def versions() -> dict:
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__}


# Recipes that ship as checkpoints. ``init`` names a shipped checkpoint to start from.
RECIPES = {
    "teacher": {"arch": {"name": "resnet18"}, "epochs": 6, "lr": 0.1, "weight_decay": 5e-4,
                "batch_size": 128, "flip": True, "seed": 0},
    # 01_pruning: half the channels of every layer removed, then a recovery fine-tune.
    "pruned50": {"arch": {"name": "resnet18-structured", "rate": 0.5}, "init": "teacher",
                 "epochs": 8, "lr": 0.05, "weight_decay": 5e-4, "batch_size": 128,
                 "flip": True, "seed": 0},
    # 03_distillation: the same student, data, epochs, optimizer and seeds, with and without the
    # teacher. Each seed ships as <recipe>-s<seed>.
    "student-scratch": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1,
                        "weight_decay": 5e-4, "batch_size": 128, "flip": True, "seed": 0,
                        "per_seed": True},
    "student-kd": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1, "weight_decay": 5e-4,
                   "batch_size": 128, "flip": True, "seed": 0, "per_seed": True,
                   "distill": {"teacher": "teacher", "T": 4.0, "alpha": 0.9}},
    # 01_pruning's control ("Scratch-B", Liu et al. 2019): pruned50's architecture from fresh
    # weights, trained with the teacher's recipe for 14 epochs, the teacher's 6 plus pruned50's 8.
    "pruned50-scratch": {"arch": {"name": "resnet18-structured", "rate": 0.5}, "reinit": True,
                         "epochs": 14, "lr": 0.1, "weight_decay": 5e-4, "batch_size": 128,
                         "flip": True, "seed": 0},
    # The frontier (issue 17): the same distillation, three times longer. Not shipped yet; its
    # seeds are trained with `python -m edgelab.train student-kd-long --seed 0 1 2 3 4`.
    "student-kd-long": {"arch": {"name": "student"}, "epochs": 15, "lr": 0.1, "weight_decay": 5e-4,
                        "batch_size": 128, "flip": True, "seed": 0, "per_seed": True,
                        "distill": {"teacher": "teacher", "T": 4.0, "alpha": 0.9}},
    # The blog's chain (issue 17), each against student-kd at the same 5 epochs: distill from
    # the pruned teacher, from the teacher in int8 (the logits a Pi would produce), and into a
    # depthwise-separable student of about the same size (MobileNet-style blocks).
    "student-kd-pruned50": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1,
                            "weight_decay": 5e-4, "batch_size": 128, "flip": True, "seed": 0,
                            "distill": {"teacher": "pruned50", "T": 4.0, "alpha": 0.9}},
    "student-kd-int8teacher": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1,
                               "weight_decay": 5e-4, "batch_size": 128, "flip": True, "seed": 0,
                               "distill": {"teacher": "teacher", "int8": True, "T": 4.0,
                                           "alpha": 0.9}},
    "student-dw-kd": {"arch": {"name": "student-dw", "widths": [64, 128, 256]}, "epochs": 5,
                      "channels_last": True, "lr": 0.1, "weight_decay": 5e-4, "batch_size": 128, "flip": True,
                      "seed": 0, "distill": {"teacher": "teacher", "T": 4.0, "alpha": 0.9}},
    # Better distillation at the same 5 epochs as student-kd (T = 4, alpha = 0.9), seed 0, each
    # one change (issue 17): the temperature, the soft term's weight, label smoothing instead of
    # a teacher, and random shifts of up to 2 pixels (the teacher then runs on every batch).
    "student-kd-T2": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1, "weight_decay": 5e-4,
                      "batch_size": 128, "flip": True, "seed": 0,
                      "distill": {"teacher": "teacher", "T": 2.0, "alpha": 0.9}},
    "student-kd-T8": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1, "weight_decay": 5e-4,
                      "batch_size": 128, "flip": True, "seed": 0,
                      "distill": {"teacher": "teacher", "T": 8.0, "alpha": 0.9}},
    "student-kd-a05": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1, "weight_decay": 5e-4,
                       "batch_size": 128, "flip": True, "seed": 0,
                       "distill": {"teacher": "teacher", "T": 4.0, "alpha": 0.5}},
    "student-ls": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1, "weight_decay": 5e-4,
                   "batch_size": 128, "flip": True, "seed": 0, "label_smoothing": 0.1},
    # 03's second signal (FitNets, Romero et al. 2015): student-kd plus beta times the MSE between
    # the student's stages.1 map, through a 1x1 adapter, and the teacher's layer1 map (both 14x14;
    # see distill.HINT_LAYERS). The adapter is dropped after training. Each seed ships as -s<seed>.
    "student-fitnets": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1,
                        "weight_decay": 5e-4, "batch_size": 128, "flip": True, "seed": 0,
                        "per_seed": True,
                        "distill": {"teacher": "teacher", "T": 4.0, "alpha": 0.9},
                        "hint": {"student": "stages.1", "teacher": "layer1", "beta": 1.0}},
    "student-kd-shift": {"arch": {"name": "student"}, "epochs": 5, "lr": 0.1,
                         "weight_decay": 5e-4, "batch_size": 128, "flip": True, "shift": 2,
                         "seed": 0, "distill": {"teacher": "teacher", "T": 4.0, "alpha": 0.9}},
    # ...and on from the long-distilled student: a quarter of its channels pruned, then
    # distilled back; and quantization-aware distillation, its weights trained on the int8 grid
    # while it keeps learning from the fp32 teacher.
    "student-pruned25-kd": {"arch": {"name": "student-structured", "rate": 0.25},
                            "init": "student-kd-long-s{seed}", "epochs": 5, "lr": 0.02,
                            "weight_decay": 5e-4, "batch_size": 128, "flip": True, "seed": 0,
                            "per_seed": True,
                            "distill": {"teacher": "teacher", "T": 4.0, "alpha": 0.9}},
    "student-qad": {"arch": {"name": "student"}, "init": "student-kd-long-s{seed}",
                    "qat_bits": 8, "epochs": 2, "lr": 0.005, "weight_decay": 5e-4,
                    "batch_size": 128, "flip": True, "seed": 0, "per_seed": True,
                    "distill": {"teacher": "teacher", "T": 4.0, "alpha": 0.9}},
    # 04_low_rank: the teacher's 3x3 convolutions factored to keep 55 % of each one's energy
    # (about 2.2x fewer parameters), then a recovery fine-tune.
    "lowrank55": {"arch": {"name": "resnet18-lowrank", "energy": 0.55}, "init": "teacher",
                  "epochs": 3, "lr": 0.02, "weight_decay": 5e-4, "batch_size": 128,
                  "flip": True, "seed": 0},
}


def default_out(name: str, seed: int | None = None) -> Path:
    recipe = RECIPES[name]
    stem = f"{name}-s{recipe['seed'] if seed is None else seed}" if recipe.get("per_seed") else name
    return paths.checkpoints_dir() / stem


def train_recipe(name: str, out: Path, epochs: int | None = None, seed: int | None = None,
                 limit: int | None = None, progress: bool = True, fresh: bool = False) -> dict:
    """Train one recipe from scratch (seeded), test it on the full test set, write the card."""
    recipe = dict(RECIPES[name])
    if epochs is not None:
        recipe["epochs"] = epochs
    if seed is not None:
        recipe["seed"] = seed
    torch.manual_seed(recipe["seed"])
    if "init" in recipe:   # a per-seed recipe may start from the same seed of another
        recipe["init"] = recipe["init"].format(seed=recipe["seed"])
    base = load_checkpoint(recipe["init"]) if "init" in recipe else None
    model = build(recipe["arch"], base=base)
    if recipe.get("channels_last"):   # depthwise convs train faster on a CPU in this layout
        model.to(memory_format=torch.channels_last)
    if recipe.get("reinit"):
        from .models import reinit
        torch.manual_seed(recipe["seed"])
        reinit(model)
    batches = data.loader("train", recipe["batch_size"], flip=recipe["flip"],
                          limit=limit, seed=recipe["seed"], shift=recipe.get("shift", 0))
    loss_fn = F.cross_entropy
    if recipe.get("label_smoothing"):
        loss_fn = partial(F.cross_entropy, label_smoothing=recipe["label_smoothing"])
    if "distill" in recipe:
        from . import distill
        kd = recipe["distill"]
        if batches.shift:   # cached logits cover the plain and mirrored images only
            if kd.get("int8"):
                raise ValueError("an int8 teacher runs from cached logits only; drop 'shift'")
            batches = distill.OnlineDistillBatches(batches, load_checkpoint(kd["teacher"]))
        elif "hint" in recipe:   # FitNets: the teacher runs up to its hint layer on each batch
            hint, teacher = recipe["hint"], load_checkpoint(kd["teacher"])
            model = distill.FeatureHint(model, teacher, hint["student"], hint["teacher"])
            batches = distill.HintBatches(batches, distill.teacher_logits(
                kd["teacher"], "train", limit, progress), teacher, hint["teacher"])
        else:
            batches = distill.DistillBatches(
                batches, distill.teacher_logits(kd["teacher"], "train", limit, progress,
                                                int8=kd.get("int8", False)))
        loss_fn = (distill.hint_loss_fn(model, kd["T"], kd["alpha"], recipe["hint"]["beta"])
                   if "hint" in recipe else distill.loss_fn(kd["T"], kd["alpha"]))
    if "qat_bits" in recipe:
        from .quantize import weight_fake_quant
        weight_fake_quant(model, recipe["qat_bits"])
    resume = paths.resume_dir() / f"{Path(out).name}.resume.pt"
    if fresh and resume.exists():
        resume.unlink()
    device = pick_device()
    t0 = time.time()
    history = fit(model, batches, recipe["epochs"], recipe["lr"], recipe["weight_decay"],
                  loss_fn=loss_fn, device=device, resume=resume, progress=progress)
    wall = time.time() - t0
    if "hint" in recipe:   # the adapter and the hooks are training-only: ship the plain student
        batches.remove()
        model = model.detach()
    if "qat_bits" in recipe:
        from .quantize import bake_weights
        bake_weights(model)   # plain weights, already on the int8 grid
    test_acc = evaluate(model, data.loader("test", 512), device)
    val_acc = evaluate(model, data.loader("val", 512), device)
    arch = dict(recipe["arch"])
    if arch["name"] == "resnet18-lowrank":  # the ranks the energy chose: shapes for loading
        from .lowrank import ranks_of
        arch["ranks"] = ranks_of(model)
    card = {
        "name": Path(out).name, "recipe": name, "arch": arch,
        "training": {k: v for k, v in recipe.items() if k != "arch"},
        "train_images": len(batches.images), "loss_per_epoch": history,
        "test_accuracy": test_acc, "test_images": 10000, "val_accuracy": val_acc,
        "seed": recipe["seed"], "epochs": recipe["epochs"],
        "init": ({"name": recipe["init"], "sha256": read_card(recipe["init"])["sha256"]}
                 if "init" in recipe else None),
        "teacher": ({"name": recipe["distill"]["teacher"],
                     "sha256": read_card(recipe["distill"]["teacher"])["sha256"]}
                    if "distill" in recipe else None),
        "wall_time_s": round(wall, 1), "device": str(device),
        "threads": torch.get_num_threads(), "versions": versions(),
        "trained": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m edgelab.train " + " ".join(sys.argv[1:]),
    }
    card = save_checkpoint(model.cpu(), out, card)
    resume.unlink(missing_ok=True)
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgelab.train",
                                description="Retrain a shipped checkpoint from scratch.")
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--out", type=Path, help="checkpoint path without suffix (default: "
                   "data/checkpoints/<recipe>, or <recipe>-s<seed> for per-seed recipes)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, nargs="+", help="one or more seeds, trained in turn")
    p.add_argument("--limit", type=int, help="train on the first N training images only")
    p.add_argument("--fresh", action="store_true", help="ignore a saved partial run")
    args = p.parse_args(argv)
    seeds = args.seed or [None]
    if args.out and len(seeds) > 1:
        p.error("--out names one checkpoint; give one --seed with it")
    for seed in seeds:
        out = args.out or default_out(args.recipe, seed)
        card = train_recipe(args.recipe, out, args.epochs, seed, args.limit, fresh=args.fresh)
        print(json.dumps({k: card[k] for k in ("name", "test_accuracy", "epochs",
                                               "wall_time_s", "sha256")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
