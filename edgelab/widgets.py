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
