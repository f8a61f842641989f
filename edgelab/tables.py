"""Records side by side: a text table for logs that renders as HTML in JupyterLab, with every
ratio taken against the baseline in the same runtime and every accuracy difference carrying its
paired standard error."""
from __future__ import annotations

import math

from .records import find

__all__ = ["Table", "table", "paired_delta"]


def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _fmt_count(n):
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def paired_delta(a: dict, b: dict) -> tuple[float, float | None]:
    """Accuracy of ``a`` minus ``b`` in points, and its standard error from the images on which
    the two disagree (paired, as McNemar's test): both saw the same images, so the images both
    get right or both get wrong carry no information about the difference. None when the records
    do not say which images they got right."""
    from .evaluation import unpack_mask

    delta = 100 * (a["accuracy"] - b["accuracy"])
    n = a.get("test_images")
    if not (a.get("correct") and b.get("correct")) or n != b.get("test_images"):
        return delta, None
    d = unpack_mask(a["correct"], n).astype(float) - unpack_mask(b["correct"], n)
    return delta, 100 * float(d.std() / math.sqrt(n))


def _fmt_delta(a: dict, b: dict) -> str:
    delta, se = paired_delta(a, b)
    return f"{delta:+.2f}" + (f" ±{se:.2f}" if se is not None else "")


class Table(str):
    """A records table: plain text wherever text is printed (papermill logs, terminals, ``str``),
    an HTML table in JupyterLab (right-aligned numbers, the baseline rows in bold), where 170
    columns of text would wrap into an unreadable block."""

    def __new__(cls, cols: list[str], rows: list[list[str]], baseline_rows: set[int],
                met: set[tuple[int, int]] = frozenset(), bars: dict | None = None):
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
        line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        text = "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])
        self = super().__new__(cls, text)
        self.cols, self.rows, self.baseline_rows = cols, rows, baseline_rows
        self.met, self.bars = set(met), dict(bars or {})
        return self

    def __repr__(self) -> str:
        return str(self)

    # The HTML folds each ratio (and gzip, and non-zeros) under the value it belongs to, so the
    # table fits JupyterLab's column at a 1280 px window (tests/test_browser.py checks it).
    _HTML = [("name", "name", ()), ("runtime", "runtime", ()), ("accuracy", "accuracy", ()),
             ("Δ pt ± SE", "Δ pt", ()), ("params (non-zero)", "params", ("nonzero",)),
             ("MACs", "MACs", ()), ("bytes (gzip, ×smaller)", "bytes", ("gzip", "×smaller")),
             ("batch-1 ms (×faster)", "b1 ms", ("×faster b1",)),
             ("batch-64 ms (×faster)", "b64 ms", ("×faster b64",))]

    def _repr_html_(self) -> str:
        from html import escape

        col = {c: i for i, c in enumerate(self.cols)}
        if "name" not in col:   # any other table: its columns as they are, text left, numbers right
            th = "".join(f'<th style="text-align:{"left" if i == 0 else "right"}">{escape(h)}</th>'
                         for i, h in enumerate(self.cols))
            bold = ' style="font-weight:bold"'
            body = "".join(
                f"<tr{bold if k in self.baseline_rows else ''}>"
                + "".join(f'<td style="text-align:{"left" if i == 0 else "right"}; '
                          f'white-space:nowrap">{escape(str(v))}</td>' for i, v in enumerate(row))
                + "</tr>" for k, row in enumerate(self.rows))
            return (f"<table style='font-size:0.85em'><thead><tr>{th}</tr></thead>"
                    f"<tbody>{body}</tbody></table>")
        th = "".join(f'<th style="text-align:{"left" if i < 2 else "right"}">{escape(h)}</th>'
                     for i, (h, _, _) in enumerate(self._HTML))
        body = []
        for k, row in enumerate(self.rows):
            cells = []
            for i, (_, main, extra) in enumerate(self._HTML):
                value = row[col[main]]
                if main == "runtime" and value == "onnxruntime":
                    value = "ORT"
                subs = []
                for e in extra:
                    v = row[col[e]]
                    if v in ("-", None) or (e == "nonzero" and v == row[col["params"]]):
                        continue
                    text = f"{v}×" if e.startswith("×") else (f"gz {v}" if e == "gzip" else f"nz {v}")
                    hit = (k, col[e]) in self.met
                    subs.append(f'<span style="background:#cfe8d8">{escape(text)}</span>' if hit
                                else escape(text))
                sub = f"<br><small>{' · '.join(subs)}</small>" if subs else ""
                align = "left" if i < 2 else "right"
                wrap = "" if i == 0 else "; white-space:nowrap"   # long names break at hyphens
                cells.append(f'<td style="text-align:{align}{wrap}">'
                             f"{escape(str(value))}{sub}</td>")
            style = ' style="font-weight:bold"' if k in self.baseline_rows else ""
            body.append(f"<tr{style}>{''.join(cells)}</tr>")
        bars = ("; green: a ratio that meets this notebook's bar ("
                + ", ".join(f"{c} ≥ {v:g}" for c, v in self.bars.items()) + ")") if self.bars else ""
        return (f"<table style='font-size:0.85em'><thead><tr>{th}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>"
                "<p style='font-size:smaller'>Bold: the baseline each ratio is taken against (same "
                "runtime). Δ pt ± SE: accuracy difference and its paired standard error. ms ±: half "
                f"the range of interleaved rounds. ORT: ONNX Runtime{bars}.</p>")


def _fmt_latency(r: dict, b: int, fmt: str) -> str:
    """The median, and where it was measured interleaved, half the range of its round medians
    as a share of it."""
    med = r.get(f"latency_b{b}_ms")
    if not med:
        return "-"
    spread = r.get(f"latency_b{b}_spread_ms")
    return format(med, fmt) + (f" ±{50 * (spread[1] - spread[0]) / med:.0f}%" if spread else "")


def table(records: list[dict], baseline: str = "teacher", bars: dict[str, float] | None = None) -> Table:
    """A side-by-side table (text, and HTML in JupyterLab); ratios are against the baseline in
    the same runtime. ``bars`` maps a ratio column ("×smaller", "×faster b1", "×faster b64")
    to the ratio a notebook's bar asks for: the cells that meet it are highlighted."""
    unknown = set(bars or ()) - {"×smaller", "×faster b1", "×faster b64"}
    if unknown:
        raise ValueError(f"bars are for the ratio columns ×smaller, ×faster b1, ×faster b64; "
                         f"got {sorted(unknown)}")
    cols = ["name", "runtime", "accuracy", "Δ pt", "params", "nonzero", "MACs", "bytes", "gzip",
            "×smaller", "b1 ms", "×faster b1", "b64 ms", "×faster b64"]
    rows = []
    for r in records:
        try:
            base = find(records, baseline, r["runtime"])
        except KeyError:
            base = None

        def ratio(key, r=r, base=base):
            if base is None or not r.get(key) or not base.get(key):
                return "-"
            return f"{base[key] / r[key]:.2f}"
        rows.append([
            r["name"], r["runtime"], f"{100 * r['accuracy']:.2f}%",
            _fmt_delta(r, base) if base else "-",
            _fmt_count(r.get("params")), _fmt_count(r.get("nonzero_params")),
            _fmt_count(r.get("macs")), _fmt_bytes(r.get("bytes")), _fmt_bytes(r.get("gzip_bytes")),
            ratio("bytes"),
            _fmt_latency(r, 1, ".2f"), ratio("latency_b1_ms"),
            _fmt_latency(r, 64, ".1f"), ratio("latency_b64_ms"),
        ])
    met = set()
    for (col, need) in (bars or {}).items():
        j = cols.index(col)
        met |= {(i, j) for i, row in enumerate(rows) if row[j] != "-" and float(row[j]) >= need}
    return Table(cols, rows, {k for k, r in enumerate(records) if r["name"] == baseline}, met, bars or {})
