"""Expensive intermediate results under ``build/cache/``, keyed by what produced them.

A key is built from everything the result depends on (a checkpoint's sha256, the sizes, the
code's parameters), so a changed input is a cache miss, never a stale hit. Removed by
``make clean``; rebuilt when missing."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

from . import paths
from .paths import atomic_write_bytes

__all__ = ["key", "path", "cached_json", "cached_tensor"]


def key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def path(name: str, parts, suffix: str = ".json", cache_dir: Path | None = None) -> Path:
    """Where the result named ``name`` for inputs ``parts`` lives: ``build/cache/<name>-<key>``
    (``name`` may hold a subfolder, "distill/teacher"). The folder is resolved now."""
    return Path(cache_dir or paths.cache_dir()) / f"{name}-{key(name, parts)}{suffix}"


def cached_json(name: str, parts, compute: Callable[[], object], cache_dir: Path | None = None):
    """``compute()``'s JSON-able result, from ``build/cache/<name>-<key>.json`` when present."""
    where = path(name, parts, ".json", cache_dir)
    if where.is_file():
        return json.loads(where.read_text())
    result = compute()
    atomic_write_bytes(where, json.dumps(result).encode())
    return result


def cached_tensor(name: str, parts, compute: Callable[[], object], cache_dir: Path | None = None):
    """``compute()``'s tensor (or dict of tensors), from ``build/cache/<name>-<key>.pt``."""
    import torch

    where = path(name, parts, ".pt", cache_dir)
    if where.is_file():
        return torch.load(where, weights_only=True)
    result = compute()
    buf = io.BytesIO()
    torch.save(result, buf)
    atomic_write_bytes(where, buf.getvalue())
    return result
