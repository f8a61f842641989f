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
        return self.timing(since=start)

    def timing(self, since: int = 1) -> dict:
        """Response times of the moves after the first ``since`` updates (1: skip the initial)."""
        times = self.response_times[since:]
        if not times:
            raise ValueError("no moves to time: every value set was the one already shown")
        return {"median_s": statistics.median(times), "max_s": max(times), "moves": len(times)}

    def _ipython_display_(self):
        display(self.widget)


# -- 01_pruning: prune rate × method ----------------------------------------------------------

def prune_panel(model, images, labels, rates_step: float = 0.05, latency_runs: int = 10,
                subset_name: str = "validation"):
    """A prune-rate slider (0 to 0.95) and a method toggle, answering on a fixed subset.

    Unstructured: one global magnitude threshold from weights sorted once; the model stays
    dense, so its raw bytes and latency should not move while gzip and non-zeros do.
    Structured: torch-pruning removes channels; each rate's pruned model is cached."""
    import copy

    import ipywidgets as W
    import matplotlib.pyplot as plt
    import torch

    from . import measure, prune

    base = model.eval()
    work = copy.deepcopy(base).eval()
    layers = prune.prunable_layers(work)
    originals = {n: m.weight.detach().clone() for n, m in layers.items()}
    ranked = torch.cat([w.abs().flatten() for w in originals.values()]).sort().values
    dense_bytes = len(measure.state_dict_bytes(base))
    others = [t for k, t in base.state_dict().items()
              if not any(k == f"{n}.weight" for n in layers) and t.dtype.is_floating_point]
    structured_cache: dict[float, torch.nn.Module] = {}
    seen: dict[str, dict[float, float]] = {"unstructured": {}, "structured": {}}

    def compute(rate, method):
        rate = round(rate, 4)
        if method == "unstructured":
            k = round(rate * len(ranked))
            threshold = ranked[k - 1].item() if k else -1.0
            with torch.no_grad():
                for n, m in layers.items():
                    m.weight.copy_(originals[n] * (originals[n].abs() > threshold))
            m = work
            gz = len(measure.gzip_compress([l.weight for l in layers.values()] + others))
            raw = dense_bytes  # the tensors are as large as ever: zeros take 4 bytes too
        else:
            if rate not in structured_cache:
                structured_cache[rate] = prune.structured(base, rate)
            m = structured_cache[rate]
            raw = len(measure.state_dict_bytes(m))
            gz = len(measure.gzip_compress(list(m.state_dict().values())))
        acc = measure.accuracy_on(m, images, labels)
        med = measure.quick_latency(m, latency_runs)
        seen[method][rate] = acc
        return {"accuracy": acc, "nonzero": measure.count_nonzero(m),
                "params": measure.count_params(m), "bytes": raw, "gzip_bytes": gz,
                "latency_b1_ms": med}

    def render(r, panel):
        print(f"{r['method']} pruning at rate {r['rate']:.2f}: accuracy {100 * r['accuracy']:.1f} % "
              f"on {len(labels)} {subset_name} images\n"
              f"non-zero weights {r['nonzero']:,} of {r['params']:,} · bytes {r['bytes'] / 1e6:.1f} MB "
              f"· gzip {r['gzip_bytes'] / 1e6:.1f} MB · batch-1 latency {r['latency_b1_ms']:.1f} ms")
        fig, ax = plt.subplots(figsize=(5.5, 3))
        for method, pts in seen.items():
            if pts:
                xs = sorted(pts)
                ax.plot(xs, [100 * pts[x] for x in xs], "o-", label=method)
        ax.set_xlim(-0.02, 0.97)
        ax.set_ylim(0, 100)
        ax.set_xlabel("prune rate")
        ax.set_ylabel(f"accuracy on {len(labels)} images (%)")
        ax.legend(loc="lower left")
        ax.grid(alpha=0.3)
        plt.show()

    controls = {
        "rate": W.FloatSlider(value=0.0, min=0.0, max=0.95, step=rates_step,
                              description="prune rate", continuous_update=False),
        "method": W.ToggleButtons(options=["unstructured", "structured"], value="unstructured"),
    }
    return Panel(controls, compute, render, title="Prune the teacher")


def bits_panel(model, images, labels, bits: int = 8, per_channel: bool = True) -> Panel:
    """Weight bit width (2–8) and per-tensor / per-channel scales, applied as fake quantization
    to every Conv/Linear weight of a copy of ``model``; shows accuracy on ``images`` (a fixed
    subset: say how many) and the bytes the weights would take. Activations stay fp32.

    ``panel.set(bits=4, granularity="per-tensor")`` moves the controls; ``panel.sweep("bits",
    range(8, 1, -1))`` times each move."""
    import copy

    from . import measure, quantize

    work = copy.deepcopy(model).cpu().eval()
    source = {k: w.detach().clone() for k, w in quantize.quantizable_weights(work).items()}
    fp32_bytes = quantize.float_bytes(work)

    def compute(bits, granularity):
        pc = granularity == "per-channel"
        quantize.fake_quantize_weights(work, bits, pc, source)
        size = quantize.weight_bytes(work, bits, pc)
        return {"accuracy": measure.accuracy_on(work, images, labels), "bytes": size, "fp32_bytes": fp32_bytes,
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
