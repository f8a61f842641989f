"""The emulated Raspberry Pi, in three modules: ``rootfs`` builds the arm64 root filesystem
(`make pi-rootfs`; no torch, so its quick re-check stays quick), ``emulate`` runs arm64 code in it
under qemu as a Pi 4 or a Pi 5 core, ``bundle`` writes and checks the folder that goes on a Pi.

``from edgelab import pi`` imports none of them: each loads on first use (``pi.bundle.build``).
"""
from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["TEMPLATE", "bundle", "emulate", "rootfs"]

# The bundle's templates (predict.py, requirements.txt, README.md): the bundle copies them and
# the root filesystem installs requirements.txt, so both read them from here.
TEMPLATE = Path(__file__).resolve().parent / "template"


def __getattr__(name: str):
    if name in ("bundle", "emulate", "rootfs"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; it holds "
                         f"{', '.join(__all__)}")
