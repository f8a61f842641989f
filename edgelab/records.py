"""A record: what ``measure`` says about one model, typed once instead of by hand everywhere.

A ``Record`` is a dataclass, so ``r.latency_b1_ms`` is checked by the editor and a misspelt
attribute is an error. It is also a mapping (``r["accuracy"]``, ``r.get``, ``r["tags"].append``),
because notebooks, checkers and older ``build/results/*.json`` files read records that way, and
``to_dict()`` gives the JSON shape of DESIGN.md's ``build/results.json``. Torch-free.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field, fields

__all__ = ["RUNTIMES", "Record", "as_record", "as_dict", "find"]

RUNTIMES = ("torch", "onnxruntime", "executorch", "litert")

# Keys every record carries, None where not measured (an ONNX session's own parameter count).
# The other fields appear in a record's dict only once set, as the keys of a plain dict did.
_ALWAYS = ("notebook", "name", "tags", "runtime", "accuracy", "test_images", "params",
           "nonzero_params", "macs", "bytes", "gzip_bytes", "arch", "correct", "threads")


@dataclass(eq=False, kw_only=True)
class Record(MutableMapping):
    """One model measured once: accuracy on ``test_images`` images, counts, bytes as shipped
    (raw and gzip), CPU latency in ms (median and p90) at batch 1 and 64 with the thread count.
    ``correct`` is the packed mask of the test images it got right (for paired ±). Keys that
    are not fields (``bundle``, another batch size's latency) live in ``extra``."""

    notebook: str | None = None
    name: str
    tags: list[str] = field(default_factory=list)
    runtime: str = "torch"
    accuracy: float | None = None
    test_images: int | None = None
    params: int | None = None
    nonzero_params: int | None = None
    macs: int | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None
    arch: str = ""
    correct: str | None = None
    val_accuracy: float | None = None
    val_images: int | None = None
    latency_b1_ms: float | None = None
    latency_b1_p90_ms: float | None = None
    latency_b1_spread_ms: list[float] | None = None
    latency_b64_ms: float | None = None
    latency_b64_p90_ms: float | None = None
    latency_b64_spread_ms: list[float] | None = None
    latency_protocol: str | None = None
    threads: int | None = None
    selected_on: str | None = None
    checkpoint: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a record needs a name, got {self.name!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.accuracy is not None and not 0 <= self.accuracy <= 1:
            raise ValueError(f"accuracy is a fraction of test_images, got {self.accuracy!r}")
        self.tags = list(self.tags)

    @classmethod
    def from_dict(cls, d) -> Record:
        """A record from its JSON dict (keys that are not fields go to ``extra``)."""
        names = _FIELDS - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        """The JSON dict: the keys every record has, then those set, then ``extra``."""
        return {k: self[k] for k in self}

    # the mapping: fields by name (unset optional ones absent), then extra's keys
    def __getitem__(self, key):
        if key in _FIELDS and key != "extra":
            value = getattr(self, key)
            if value is None and key not in _ALWAYS:
                raise KeyError(key)
            return value
        return self.extra[key]

    def __setitem__(self, key, value):
        if key in _FIELDS and key != "extra":
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key):
        if key in _ALWAYS:
            raise KeyError(f"every record has {key!r}; set it to None instead")
        if key in _FIELDS and key != "extra":
            if getattr(self, key) is None:
                raise KeyError(key)
            setattr(self, key, None)
        else:
            del self.extra[key]

    def __iter__(self):
        for f in fields(self):
            if f.name != "extra" and (f.name in _ALWAYS or getattr(self, f.name) is not None):
                yield f.name
        yield from self.extra

    def __len__(self):
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        acc = "-" if self.accuracy is None else f"{100 * self.accuracy:.2f}%"
        return f"Record({self.name!r}, {self.runtime}, accuracy {acc}, {self.bytes} B)"


_FIELDS = {f.name for f in fields(Record)}


def as_record(r) -> Record:
    """A Record as it is, or one built from a plain dict (an older results file's)."""
    return r if isinstance(r, Record) else Record.from_dict(r)


def as_dict(r) -> dict:
    """The JSON dict of a Record, or a copy of a plain dict."""
    return r.to_dict() if isinstance(r, Record) else dict(r)


def find(records, name: str, runtime: str | None = None):
    """The first record called ``name`` (in ``runtime``, if given); KeyError naming what exists."""
    for r in records:
        if r["name"] == name and (runtime is None or r["runtime"] == runtime):
            return r
    raise KeyError(f"no record named {name!r}" + (f" in runtime {runtime!r}" if runtime else "")
                   + f"; records: {[r['name'] for r in records]}")
