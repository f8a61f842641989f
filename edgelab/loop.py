"""The one training loop; everything a particular training needs is a callback.

``train.fit`` (epochs, one-cycle, resumable), ``train.finetune_steps`` (a short live fine-tune)
and ``quantize.qat_finetune`` (fake quantization, batch norms and observers frozen part-way) all
call ``run``. What differs between them is a list of small callbacks, each one job:

    Schedule(scheduler)       step the learning-rate schedule after every optimizer step
    ReapplyMasks(masks)       keep pruned weights at zero after every step
    FreezeBatchNorm(after)    stop updating batch-norm statistics from step ``after`` on
    FreezeObservers(after)    fix the QAT observers' ranges from step ``after`` on
    Progress(desc)            a tqdm bar with the running mean loss
    Resume(path)              save the full state after each epoch; pick it up if it is there

A step count given as an int is a step number; as a float, a fraction of all the steps.
A plain function in ``callbacks`` is called as ``fn(model)`` after each step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["State", "Callback", "run", "train_step", "to_device", "Schedule", "AfterStep",
           "ReapplyMasks", "FreezeBatchNorm", "FreezeObservers", "Progress", "Resume"]


def to_device(target, device):
    """Labels, or a tuple of per-image targets (labels and a teacher's logits), on ``device``."""
    if isinstance(target, (tuple, list)):
        return type(target)(t.to(device) for t in target)
    return target.to(device)


def train_step(model, x, y, optimizer, loss_fn=F.cross_entropy) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


@dataclass
class State:
    """What the loop knows; callbacks read and change it. ``step`` counts optimizer steps."""
    model: nn.Module
    batches: object
    optimizer: torch.optim.Optimizer
    scheduler: object = None
    device: torch.device | None = None
    epochs: int = 1
    epoch_steps: int = 0        # steps in one epoch
    total_steps: int = 0
    epoch: int = 0              # epochs finished
    step: int = 0
    loss: float = float("nan")  # the last step's
    losses: list = field(default_factory=list)    # every step's, this run
    history: list = field(default_factory=list)   # each epoch's mean, over images
    seen: int = 0               # images this epoch
    total: float = 0.0          # their summed loss


class Callback:
    """Override the hooks you need; each gets the loop's ``State``."""

    def begin(self, state: State): pass
    def begin_epoch(self, state: State): pass
    def before_step(self, state: State): pass
    def after_step(self, state: State): pass
    def after_epoch(self, state: State): pass
    def end(self, state: State): pass


def _at(after: int | float, state: State) -> int:
    return int(after * state.total_steps) if isinstance(after, float) else int(after)


class Schedule(Callback):
    def __init__(self, scheduler):
        self.scheduler = scheduler

    def after_step(self, state):
        self.scheduler.step()


class AfterStep(Callback):
    """``fn(model)`` after every step (the old ``after_step=`` argument)."""

    def __init__(self, fn):
        self.fn = fn

    def after_step(self, state):
        self.fn(state.model)


class ReapplyMasks(Callback):
    """Multiply weights by their masks after every step, so momentum and weight decay cannot
    bring pruned weights back. ``masks`` maps a parameter name to a bool mask; without it, the
    masks ``torch.nn.utils.prune`` attached (``weight_mask``) are applied to ``weight_orig``."""

    def __init__(self, masks: dict[str, torch.Tensor] | None = None):
        self.masks = masks

    @torch.no_grad()
    def after_step(self, state):
        if self.masks is not None:
            params = dict(state.model.named_parameters())
            for name, mask in self.masks.items():
                params[name].mul_(mask.to(params[name].device, params[name].dtype))
            return
        for m in state.model.modules():
            for name, buf in m.named_buffers(recurse=False):
                if name.endswith("_mask") and hasattr(m, name[:-5] + "_orig"):
                    getattr(m, name[:-5] + "_orig").mul_(buf)


class FreezeBatchNorm(Callback):
    """From step ``after`` on, batch norms normalise with their running statistics and stop
    updating them (QAT's fused Conv+BN modules too)."""

    def __init__(self, after: int | float = 0):
        self.after = after

    def before_step(self, state):
        if state.step == _at(self.after, state):
            from torch.ao.nn.intrinsic.qat import freeze_bn_stats
            state.model.apply(freeze_bn_stats)
            for m in state.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


class FreezeObservers(Callback):
    """From step ``after`` on, QAT's observers stop moving the quantization ranges: the last
    steps train against the ranges the int8 model will use."""

    def __init__(self, after: int | float):
        self.after = after

    def before_step(self, state):
        if state.step == _at(self.after, state):
            state.model.apply(torch.ao.quantization.disable_observer)


class Progress(Callback):
    """A tqdm bar per epoch ("epoch 2/5") showing the running mean loss."""

    def __init__(self, desc: str | None = None):
        self.desc, self.bar = desc, None

    def begin_epoch(self, state):
        from tqdm.auto import tqdm
        desc = self.desc or f"epoch {state.epoch + 1}/{state.epochs}"
        self.bar = tqdm(total=state.epoch_steps, desc=desc)

    def after_step(self, state):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{state.total / state.seen:.4f}", refresh=False)

    def after_epoch(self, state):
        self.bar.close()


class Resume(Callback):
    """Save model, optimizer, schedule, both random states and the loss history after every
    epoch (atomically), and start from that file when it exists: a stopped run continues where
    it was, with the same result as one that never stopped. Needs ``batches.generator``."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def begin(self, state):
        if not self.path.is_file():
            return
        saved = torch.load(self.path, map_location=state.device, weights_only=True)
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.scheduler is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
        state.batches.generator.set_state(saved["batches_rng"])
        torch.set_rng_state(saved["torch_rng"])
        state.history, state.epoch = list(saved["history"]), int(saved["epoch"])
        state.step = state.epoch * state.epoch_steps
        print(f"resumed from {self.path} after epoch {state.epoch}")

    def after_epoch(self, state):
        import io

        from .paths import atomic_write_bytes
        buf = io.BytesIO()
        torch.save({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict() if state.scheduler else None,
                    "epoch": state.epoch, "history": state.history,
                    "batches_rng": state.batches.generator.get_state(),
                    "torch_rng": torch.get_rng_state()}, buf)
        atomic_write_bytes(self.path, buf.getvalue())


def _take(batches, n: int):
    """``n`` batches, going round ``batches`` again as often as needed."""
    taken = 0
    while taken < n:
        before = taken
        for b in batches:
            yield b
            taken += 1
            if taken >= n:
                return
        if taken == before:
            raise ValueError("the batches are empty: nothing to train on")


def run(model: nn.Module, batches, optimizer, *, epochs: int | None = None,
        steps: int | None = None, scheduler=None, loss_fn=F.cross_entropy, device=None,
        callbacks=()) -> State:
    """Train ``model`` in place for ``epochs`` passes over ``batches`` or for ``steps`` optimizer
    steps (going round the batches as needed; one "epoch" of ``steps``). Each batch goes to
    ``device`` (default: where the model's weights are). With ``scheduler``, it is stepped after
    every step. Returns the final ``State`` (``history``: each epoch's mean loss; ``losses``:
    each step's)."""
    if (epochs is None) == (steps is None):
        raise ValueError("give either epochs (passes over the batches) or steps (optimizer "
                         f"steps), not {'both' if epochs is not None else 'neither'}")
    if (steps if steps is not None else epochs) < 1:
        raise ValueError(f"training needs at least 1 {'step' if steps else 'epoch'}, got "
                         f"{steps if steps is not None else epochs}")
    if device is None:
        device = next(model.parameters()).device
    per_epoch = steps if steps is not None else len(batches)
    state = State(model, batches, optimizer, scheduler, torch.device(device),
                  epochs=1 if steps is not None else epochs, epoch_steps=per_epoch,
                  total_steps=per_epoch * (1 if steps is not None else epochs))
    cbs = ([Schedule(scheduler)] if scheduler is not None else []) + [
        c if isinstance(c, Callback) else AfterStep(c) for c in callbacks]

    def call(hook):
        for c in cbs:
            getattr(c, hook)(state)
    model.train()
    call("begin")
    while state.epoch < state.epochs:
        state.seen, state.total = 0, 0.0
        call("begin_epoch")
        for x, y in (_take(batches, steps) if steps is not None else batches):
            call("before_step")
            state.loss = train_step(model, x.to(state.device), to_device(y, state.device),
                                    optimizer, loss_fn)
            state.step += 1
            state.losses.append(state.loss)
            state.seen, state.total = state.seen + len(x), state.total + state.loss * len(x)
            call("after_step")
        state.history.append(state.total / state.seen)
        state.epoch += 1
        call("after_epoch")
    call("end")
    # the last step's gradients are of no further use; kept, they cost one model's size
    model.zero_grad(set_to_none=True)
    return state
