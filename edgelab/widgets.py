"""Interactive panels. Each is a ``Panel``: ipywidgets controls wired to a compute function.

The logic runs without a browser: ``panel.set(rate=0.5)`` moves a control exactly as a learner
would (the same observer fires) and returns the freshly computed result, so tests and papermill
runs can drive a panel and time its responses.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import ipywidgets as W
from IPython.display import display


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
        t0 = time.perf_counter()
        self.status.value = "<i>computing…</i>"
        values = self.values()
        self.result = dict(self.compute(**values), **values)
        self.history.append(self.result)
        if self.render is not None:
            with self.output:
                self.output.clear_output(wait=True)
                self.render(self.result, self)
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

    def sweep(self, name: str, values) -> dict:
        """Move one control through ``values``; the median response time per move."""
        start = len(self.response_times)
        for v in values:
            self.set(**{name: v})
        times = self.response_times[start:]
        return {"median_s": statistics.median(times), "max_s": max(times), "moves": len(times)}

    def _ipython_display_(self):
        display(self.widget)


def bits_panel(model, images, labels, bits: int = 8, per_channel: bool = True,
               batch_size: int = 500) -> Panel:
    """Weight bit width (2–8) and per-tensor / per-channel scales, applied as fake quantization
    to every Conv/Linear weight of a copy of ``model``; shows accuracy on ``images`` (a fixed
    subset: say how many) and the bytes the weights would take. Activations stay fp32.

    ``panel.set(bits=4, granularity="per-tensor")`` moves the controls; ``panel.sweep("bits",
    range(8, 1, -1))`` times each move."""
    import copy

    import torch

    from . import quantize

    work = copy.deepcopy(model).cpu().eval()
    source = {k: w.detach().clone() for k, w in quantize.quantizable_weights(work).items()}
    fp32_bytes = quantize.float_bytes(work)

    def accuracy() -> float:
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                logits = work(images[start:start + batch_size])
                correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
        return correct / len(images)

    def compute(bits, granularity):
        pc = granularity == "per-channel"
        quantize.fake_quantize_weights(work, bits, pc, source)
        size = quantize.weight_bytes(work, bits, pc)
        return {"accuracy": accuracy(), "bytes": size, "fp32_bytes": fp32_bytes,
                "images": len(images)}

    def render(r, _panel):
        print(f"{r['bits']}-bit weights, {r['granularity']} scales: "
              f"accuracy {100 * r['accuracy']:.1f} % on {r['images']} test images, "
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
