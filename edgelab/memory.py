"""The notebook kernel's resident memory: Binder's 2 GB limit counts it, not what Python holds.

``setup_notebook()`` is what a notebook calls once after its imports; importing edgelab changes
nothing by itself.
"""
from __future__ import annotations

import os

__all__ = ["setup_notebook", "release_memory", "release_after_every_cell"]


def release_memory(full: bool = True) -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise), so
    models deleted in earlier cells stop counting towards the notebook's resident memory.
    ``full=False`` collects only the young generations: well under a millisecond, against a
    fifth of a second for a full pass once torch's compiler stack is imported."""
    import ctypes
    import gc

    gc.collect() if full else gc.collect(1)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows): nothing to trim
        pass


def _fewer_malloc_arenas(n: int = 2) -> None:
    """glibc gives each new thread (torch's, ONNX Runtime's, the kernel's) its own heap arena, up
    to 8 per core, and each one keeps its freed pages fragmented; a notebook creeps up by
    hundreds of MB. Two arenas cost nothing measurable here. MALLOC_ARENA_MAX, if set, wins."""
    import ctypes

    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


# A cell that ran this long may have left big reference cycles (a model's deep copies, observer
# graphs): after it, a full collection (about 0.2 s) is worth its time. Quick cells get the
# young generations only.
FULL_COLLECTION_AFTER_S = 1.0
_cell_started = [0.0]


def _note_cell_start(info=None) -> None:
    import time

    _cell_started[0] = time.monotonic()


def _release_after_cell(result=None) -> None:
    import time

    long_cell = time.monotonic() - _cell_started[0] >= FULL_COLLECTION_AFTER_S
    release_memory(full=long_cell and _cell_started[0] > 0)


def release_after_every_cell() -> None:
    """In a Jupyter kernel, trim the heap after every cell, with a full garbage collection after
    cells that ran ``FULL_COLLECTION_AFTER_S`` or longer. Without it freed memory piles up cell
    after cell (glibc's arenas keep what they once held; models deleted inside cycles wait for a
    full collection), and Binder's 2 GB limit counts the resident size, not what Python still
    uses. Outside IPython this does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    hooks = shell.events.callbacks["post_run_cell"]
    if not any(getattr(h, "__name__", "") == "_release_after_cell" for h in hooks):
        shell.events.register("pre_run_cell", _note_cell_start)
        shell.events.register("post_run_cell", _release_after_cell)


def setup_notebook() -> None:
    """What a notebook calls once, after its imports: two malloc arenas and a heap trim after
    every cell, so the kernel's resident memory tracks what Python still holds (Binder's 2 GB
    limit counts resident memory), and the workbook's figure style. Importing edgelab changes
    nothing by itself."""
    from .figures import style

    _fewer_malloc_arenas()
    release_after_every_cell()
    style()
