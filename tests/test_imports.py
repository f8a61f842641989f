"""Importing edgelab changes nothing about the process: malloc arenas, IPython hooks, the
quantized engine, Inductor's freezing, warning filters, threads and the environment are only
touched by ``memory.setup_notebook()`` or inside context managers. Each check runs in a fresh
interpreter, so what an earlier test imported cannot hide a side effect."""
import json
import os
import subprocess
import sys

PROBE = r"""
import ctypes, json, os, pkgutil, sys, warnings

touched = []                      # any libc symbol looked up by name (mallopt, ...)
_getattr = ctypes.CDLL.__getattr__
def _spy(self, name):
    touched.append(name)
    return _getattr(self, name)
ctypes.CDLL.__getattr__ = _spy

import torch, torch._inductor.config as inductor_config
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()

def snapshot():
    return {"filters": [repr(f) for f in warnings.filters],
            "engine": torch.backends.quantized.engine,
            "freezing": inductor_config.freezing,
            "threads": torch.get_num_threads(),
            "grad": torch.is_grad_enabled(),
            "dtype": str(torch.get_default_dtype()),
            "environ": dict(os.environ),
            "ipython_hooks": {k: len(v) for k, v in shell.events.callbacks.items()},
            "libc": sorted(set(touched))}

before = snapshot()
import edgelab
names = [m.name for m in pkgutil.walk_packages(edgelab.__path__, "edgelab.")]
for name in names:
    __import__(name)
print(json.dumps({"before": before, "after": snapshot(), "modules": names}))
"""


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_importing_every_module_has_no_side_effects():
    got = _run(PROBE)
    assert len(got["modules"]) > 20
    before, after = got["before"], got["after"]
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if "filters" in changed:   # say which filters appeared, not two long lists
        new = [f for f in after["filters"] if f not in before["filters"]]
        changed["filters"] = f"new warning filters: {new}"
    assert not changed, f"importing edgelab changed the process: {changed}"


def test_paths_and_cache_import_without_torch():
    got = _run("import json, sys; import edgelab.paths, edgelab.cache; "
               "print(json.dumps({'torch': 'torch' in sys.modules}))")
    assert got == {"torch": False}
