"""Importing ``shardgen`` or ``loaders`` changes nothing in the importing process (issue 10).

A training script that imports ``loaders`` keeps Pillow's decompression-bomb limit, its
signal handlers, random states, warning filters, tqdm settings, start method, logging
and environment exactly as they were. Each check runs in a fresh interpreter: the
third-party packages are imported first (their own import-time effects are not ours),
then the process state is recorded, our modules imported, and the state compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


from conftest import ROOT

#: Imported before the first snapshot: what our modules import is theirs to change.
THIRD_PARTY = ["numpy", "torch", "torch.utils.data", "PIL.Image", "PIL.PngImagePlugin", "fsspec",
               "fsspec.implementations.local", "xxhash", "tqdm", "fire", "isal.isal_zlib"]

#: shardgen modules that import shardgen.imaging.image, which still sets MAX_IMAGE_PIXELS (see below).
IMAGE_SIDE = {"build", "image", "scan", "index"}

SCRIPT = r"""
import gc, hashlib, importlib, json, logging, multiprocessing, os, pkgutil, random, signal, socket
import sys, threading, warnings

for name in THIRD_PARTY:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
import numpy as np, torch, tqdm, PIL.Image


def digest(x):
    return hashlib.sha256(repr(x).encode()).hexdigest()[:16]


def state():
    handlers = {}
    for s in signal.valid_signals():
        try:
            handlers[int(s)] = repr(signal.getsignal(s))
        except (OSError, ValueError):
            pass
    np_state = np.random.get_state()
    return {
        "PIL.Image.MAX_IMAGE_PIXELS": PIL.Image.MAX_IMAGE_PIXELS,
        "signal handlers": handlers,
        "random state": digest(random.getstate()),
        "numpy random state": digest((np_state[0], np_state[1].tobytes(), np_state[2:])),
        "numpy error settings": np.geterr(),
        "torch rng": digest(torch.random.get_rng_state().numpy().tobytes()),
        "torch threads": torch.get_num_threads(),
        "torch default dtype": str(torch.get_default_dtype()),
        "torch deterministic": torch.are_deterministic_algorithms_enabled(),
        "warnings filters": repr(warnings.filters),
        "tqdm monitor_interval": tqdm.tqdm.monitor_interval,
        "start method": multiprocessing.get_start_method(allow_none=True),
        "root logger": [logging.getLogger().level, repr(logging.getLogger().handlers)],
        "logging disabled": logging.root.manager.disable,
        "excepthooks": [repr(sys.excepthook), repr(threading.excepthook)],
        "environment": dict(os.environ),
        "sys.path": list(sys.path),
        "gc": [gc.isenabled(), gc.get_threshold()],
        "recursion limit": sys.getrecursionlimit(),
        "switch interval": sys.getswitchinterval(),
        "socket timeout": socket.getdefaulttimeout(),
        "threads": threading.active_count(),
    }


def submodules(package, skip=()):
    pkg = importlib.import_module(package)
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
            if m.name not in skip and not m.name.startswith("__")]


before = state()
for name in MODULES:
    importlib.import_module(name)
    if name in ("shardgen", "loaders") and EVERY_SUBMODULE:
        for sub in submodules(name, SKIP if name == "shardgen" else ()):
            importlib.import_module(sub)
after = state()
print(json.dumps({k: [before[k], after[k]] for k in before if before[k] != after[k]}, default=repr))
"""


def changes(modules: list[str], every_submodule: bool = True, skip: set[str] = frozenset()) -> dict:
    """What importing ``modules`` (and with ``every_submodule`` all modules of the shardgen
    and loaders packages, but ``skip``) changes in a fresh interpreter."""
    code = (f"THIRD_PARTY = {THIRD_PARTY!r}\nMODULES = {modules!r}\nEVERY_SUBMODULE = {every_submodule!r}\n"
            f"SKIP = {sorted(skip)!r}\n" + SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_the_issues_check_pillows_limit_survives_import_shardgen_and_loaders():
    code = "import PIL.Image as I; a=I.MAX_IMAGE_PIXELS; import shardgen, loaders; assert I.MAX_IMAGE_PIXELS == a"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert p.returncode == 0, p.stderr


def test_importing_loaders_and_the_reading_side_of_shardgen_changes_nothing():
    """``loaders`` and every module of both packages except the build's image side."""
    assert changes(["shardgen", "shardgen.storage", "loaders"], skip=IMAGE_SIDE) == {}


def test_importing_the_build_side_changes_nothing():
    assert changes(["shardgen.imaging.image", "shardgen.build.run", "shardgen.cli", "loaders"]) == {}
