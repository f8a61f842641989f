"""Expensive intermediate results under ``build/cache/``, keyed by what produced them.

A key is built from everything the result depends on (a checkpoint's sha256, the sizes, the
code's parameters), so a changed input is a cache miss, never a stale hit. Removed by
``make clean``; rebuilt when missing."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from .data import REPO_ROOT
from .models import atomic_write_bytes

__all__ = ["CACHE_DIR", "key", "cached_json"]

CACHE_DIR = REPO_ROOT / "build" / "cache"


def key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_json(name: str, parts, compute: Callable[[], object], cache_dir: Path | None = None):
    """``compute()``'s JSON-able result, from ``build/cache/<name>-<key>.json`` when present."""
    path = Path(cache_dir or CACHE_DIR) / f"{name}-{key(name, parts)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    atomic_write_bytes(path, json.dumps(result).encode())
    return result
