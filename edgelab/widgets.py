"""Interactive panels. Each is a ``Panel``: ipywidgets controls wired to a compute function.

The logic runs without a browser: ``panel.set(rate=0.5)`` moves a control exactly as a learner
would (the same observer fires) and returns the freshly computed result, so tests and papermill
runs can drive a panel and time its responses. A panel is controls plus rendering: what a move
computes lives next to its technique (``sensitivity.RateSweep``, ``lowrank.EnergySweep``, ``qmath``,
``distill``), where it is tested without widgets.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import ipywidgets as W
from IPython.display import display

from . import figures

__all__ = ["Panel", "prune_panel", "bits_panel", "distill_panel", "lowrank_panel"]


class Panel:
    def __init__(self, controls: dict[str, W.ValueWidget], compute: Callable[..., dict],
                 render: Callable[[dict, "Panel"], None] | None = None, title: str = ""):
        self.controls, self.compute, self.render = controls, compute, render
        self.output = W.Output()
        self.status = W.HTML()
        self.result: dict = {}
        self.history: list[dict] = []
        self.response_times: list[float] = []
        header = [W.HTML(f"<b>{title}</b>")] if title else []
        self.widget = W.VBox(header + [W.HBox(list(controls.values())), self.status, self.output])
        for control in controls.values():
            control.observe(self._changed, names="value")
        self._update()

    def values(self) -> dict:
        return {name: c.value for name, c in self.controls.items()}

    def _changed(self, _change) -> None:
        self._update()

    def _update(self) -> None:
        import matplotlib.pyplot as plt

        t0 = time.perf_counter()
        self.status.value = "<i>computing…</i>"
        values = self.values()
        self.result = dict(self.compute(**values), **values)
        self.history.append(self.result)
        if self.render is not None:
            figures = set(plt.get_fignums())
            with self.output:
                self.output.clear_output(wait=True)
                self.render(self.result, self)
            for n in set(plt.get_fignums()) - figures:  # shown: a slider makes one per move
                plt.close(n)
        elapsed = time.perf_counter() - t0
        self.response_times.append(elapsed)
        self.status.value = f"<small>updated in {elapsed:.2f} s</small>"

    def set(self, **values) -> dict:
        """Move controls as a learner would; returns the result after the last move."""
        for name, value in values.items():
            if name not in self.controls:
                raise KeyError(f"no control {name!r}; this panel has {sorted(self.controls)}")
            self.controls[name].value = value
        return self.result

    def sweep(self, name: str, values) -> list[dict]:
        """Move one control through ``values``; the result of each move, in order (a value
        already shown is no move, and adds none). ``timing(last=len(...))`` times them."""
        start = len(self.history)
        for v in values:
            self.set(**{name: v})
        return self.history[start:]

    def timing(self, since: int = 1, last: int | None = None) -> dict:
        """Response times of the moves after the first ``since`` updates (1: skip the initial),
        or of the ``last`` ones (a sweep's: ``last=len(panel.sweep(...))``)."""
        times = self.response_times[since:] if last is None else self.response_times[-last:]
        if not times or last == 0:
            raise ValueError("no moves to time: every value set was the one already shown")
        return {"median_s": statistics.median(times), "max_s": max(times), "moves": len(times)}

    def _ipython_display_(self):
        display(self.widget)


# -- 01_pruning: prune rate × method ----------------------------------------------------------

def prune_panel(model, images, labels, rates_step: float = 0.05, latency_runs: int = 10,
                subset_name: str = "validation") -> Panel:
    """A prune-rate slider (0 to 0.95) and a method toggle over ``sensitivity.RateSweep``,
    answering on a fixed subset; the chart shows accuracy at every rate visited so far."""
    import matplotlib.pyplot as plt

    from . import sensitivity

    pruned = sensitivity.RateSweep(model, images, labels, rates_step, latency_runs)

    def render(r, panel):
        print(f"{r['method']} pruning at rate {r['rate']:.2f}: accuracy {100 * r['accuracy']:.1f} % "
              f"on {len(labels)} {subset_name} images\n"
              f"non-zero weights {r['nonzero']:,} of {r['params']:,} · bytes {r['bytes'] / 1e6:.1f} MB "
              f"· gzip {r['gzip_bytes'] / 1e6:.1f} MB · batch-1 latency {r['latency_b1_ms']:.1f} ms")
        seen: dict[str, dict[float, float]] = {"unstructured": {}, "structured": {}}
        for h in panel.history:
            seen[h["method"]][round(h["rate"], 4)] = h["accuracy"]
        fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.4))
        for method, pts in seen.items():
            if pts:
                xs = sorted(pts)
                figures.accuracy_errorbar(ax, xs, [pts[x] for x in xs], len(labels), ls="-",
                                          label=method)
        ax.set_xlim(-0.02, 0.97)
        ax.set_ylim(0, 100)
        ax.set_xlabel("prune rate (share of weights or channels removed)")
        ax.set_ylabel(f"accuracy (%)\n{len(labels):,} images, ±1 SE")
        ax.set_title(f"{r['method'].capitalize()} pruning at {r['rate']:.2f}: "
                     f"{100 * r['accuracy']:.1f} % ({len(seen[r['method']])} rates tried)")
        ax.legend(loc="lower left")
        figures.show(fig)

    controls = {
        "rate": W.FloatSlider(value=0.0, min=0.0, max=0.95, step=rates_step,
                              description="prune rate", continuous_update=False),
        "method": W.ToggleButtons(options=["unstructured", "structured"], value="unstructured"),
    }
    return Panel(controls, pruned.at, render, title="Prune the teacher")


def bits_panel(model, images, labels, bits: int = 8, per_channel: bool = True,
               subset_name: str = "validation") -> Panel:
    """Weight bit width (2–8) and per-tensor / per-channel scales, applied as fake quantization
    to every Conv/Linear weight of ``model`` (on a copy of those weights made for each move, not
    kept); shows accuracy on ``images`` (a fixed subset: say how many) and the bytes the weights
    would take. Activations stay fp32.

    ``panel.set(bits=4, granularity="per-tensor")`` moves the controls; ``panel.sweep("bits",
    range(7, 1, -1))`` returns each move's result, and ``panel.timing()`` how long they took."""
    from . import evaluation, qmath

    fp32_bytes = qmath.float_bytes(model)

    def compute(bits, granularity):
        pc = granularity == "per-channel"
        fake = qmath.fake_quantized_weights(model, bits, pc)
        accuracy = evaluation.accuracy_on(qmath.with_weights(model, fake), images, labels)
        return {"accuracy": accuracy, "bytes": qmath.weight_bytes(model, bits, pc),
                "fp32_bytes": fp32_bytes, "images": len(images)}

    def render(r, _panel):
        print(f"{r['bits']}-bit weights, {r['granularity']} scales: "
              f"accuracy {100 * r['accuracy']:.1f} % on {r['images']} {subset_name} images, "
              f"weights {r['bytes'] / 1e6:.2f} MB ({r['fp32_bytes'] / r['bytes']:.1f}x smaller "
              "than fp32)")

    controls = {
        "bits": W.IntSlider(value=bits, min=2, max=8, step=1, description="weight bits",
                            continuous_update=False),
        "granularity": W.ToggleButtons(options=["per-tensor", "per-channel"],
                                       value="per-channel" if per_channel else "per-tensor",
                                       description="scales"),
    }
    return Panel(controls, compute, render, title="Fake-quantized weights")


# -- 03_distillation: temperature × alpha ----------------------------------------------------

def distill_panel(teacher_logits, student_logits, labels, class_names, T: float = 4.0,
                  alpha: float = 0.9) -> Panel:
    """Temperature and alpha sliders over precomputed logits of a few test images: the
    teacher's and the student's softened distributions for the chosen image, and the loss
    terms on all of them. Nothing runs a model, so every move is instant."""
    import matplotlib.pyplot as plt

    from . import distill

    names = [f"#{i}: {class_names[int(y)]}" for i, y in enumerate(labels)]

    def compute(T, alpha, image):
        i = names.index(image)
        terms = distill.loss_terms(student_logits, teacher_logits, labels, T, alpha)
        return {"teacher_p": distill.soften(teacher_logits[i], T).tolist(),
                "student_p": distill.soften(student_logits[i], T).tolist(),
                **{k: v.item() for k, v in terms.items()}}

    def render(r, _panel):
        print(f"T = {r['T']:.1f}, alpha = {r['alpha']:.2f} on {len(labels)} test images: "
              f"soft term (T² · KL) {r['soft']:.3f} · hard term (CE) {r['hard']:.3f} · "
              f"loss {r['total']:.3f}")
        fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.4))
        x = range(len(class_names))
        ax.bar([i - 0.2 for i in x], r["teacher_p"], 0.4, label="teacher")
        ax.bar([i + 0.2 for i in x], r["student_p"], 0.4, label="student")
        ax.set_xticks(list(x), class_names, rotation=30, ha="right", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"probability at T = {r['T']:.1f}")
        ax.set_title(f"Image {r['image']}: the largest teacher probability at T = {r['T']:.1f} "
                     f"is {max(r['teacher_p']):.2f}")
        ax.legend(loc="upper right")
        figures.show(fig)

    controls = {
        "T": W.FloatSlider(value=T, min=1.0, max=20.0, step=0.5, description="temperature T",
                           continuous_update=False),
        "alpha": W.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="alpha",
                               continuous_update=False),
        "image": W.Dropdown(options=names, value=names[0], description="image"),
    }
    return Panel(controls, compute, render, title="Softened outputs and the distillation loss")


# -- 04_low_rank: energy kept -> per-layer ranks ----------------------------------------------

def lowrank_panel(model, images, labels, energy: float = 0.9, step: float = 0.05,
                  latency_runs: int = 10, subset_name: str = "validation", svds=None) -> Panel:
    """An energy slider (0.3 to 1) over ``lowrank.EnergySweep``: every factorable conv of
    ``model`` keeps the smallest rank holding that fraction of its squared singular values
    (``lowrank.plan``; layers where that saves no parameters stay whole). Shows parameters,
    MACs, accuracy on ``images`` (a fixed subset: ``subset_name`` says which), batch-1 latency,
    and accuracy against parameters for every energy visited so far. Pass ``svds``
    (``lowrank.decompose``) when they are at hand: the SVDs are the slow part."""
    import matplotlib.pyplot as plt

    from . import lowrank

    factored = lowrank.EnergySweep(model, images, labels, svds, latency_runs)
    original = factored.original

    def render(r, panel):
        ranks = sorted(r["ranks"].values())
        span = f" (ranks {ranks[0]}–{ranks[-1]})" if ranks else ""
        print(f"energy kept {r['energy']:.2f}: {r['factored']} of {r['layers']} convolutions "
              f"factored{span}\nparameters {r['params'] / 1e6:.2f} M "
              f"({original['params'] / r['params']:.2f}x fewer) · MACs {r['macs'] / 1e6:.1f} M "
              f"({original['macs'] / r['macs']:.2f}x fewer) · accuracy {100 * r['accuracy']:.1f} % "
              f"on {r['images']} {subset_name} images (original {100 * original['accuracy']:.1f} %)"
              f" · batch-1 latency {r['latency_b1_ms']:.1f} ms")
        fig, ax = plt.subplots(figsize=(figures.WIDTH, 3.4))
        seen = {round(h["energy"], 4): h for h in panel.history}
        pts = sorted(seen.values(), key=lambda p: p["params"])
        figures.accuracy_errorbar(ax, [p["params"] / 1e6 for p in pts],
                                  [p["accuracy"] for p in pts], r["images"], ls="-",
                                  label="factored, one point per energy tried")
        ax.plot(r["params"] / 1e6, 100 * r["accuracy"], "o", ms=13, mfc="none",
                mec=figures.PALETTE[3], mew=2, label=f"energy {r['energy']:.2f} (now)")
        figures.accuracy_errorbar(ax, [original["params"] / 1e6], [original["accuracy"]],
                                  r["images"], marker="*", ms=12, color="black", label="original")
        ax.set_xlim(0, 1.08 * original["params"] / 1e6)
        ax.set_ylim(0, 100)
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(f"accuracy (%)\n{r['images']:,} images, ±1 SE")
        ax.set_title(f"Keeping {r['energy']:.2f} of the energy: "
                     f"{original['params'] / r['params']:.2f}x fewer parameters")
        ax.legend(loc="lower right")
        figures.show(fig)

    controls = {"energy": W.FloatSlider(value=energy, min=0.3, max=1.0, step=step,
                                        description="energy kept", readout_format=".2f",
                                        continuous_update=False)}
    return Panel(controls, factored.at, render, title="Factor the convolutions by energy kept")
