"""The folders form a one-way graph (docs/architecture.md, "Layers"): a test that fails when an import goes
against it, when a cycle appears, or when a module imports another module's private name.

Every ``import`` and ``from ... import`` in ``shardgen/`` and ``loaders/`` counts, wherever it stands (inside
functions and under ``TYPE_CHECKING`` too): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shardgen", "loaders")

#: Layers, lowest first: a module may import modules of its own layer or a lower one, never a higher one.
#: Each entry is a dotted prefix (a folder or a module); the longest matching prefix decides.
LAYERS: dict[str, int] = {
    # shardgen: shared helpers and the format at the bottom, the CLI on top
    "shardgen": 0, "shardgen.errors": 0, "shardgen.retry": 0, "shardgen.cpus": 0, "shardgen.progress": 0,
    "shardgen.report": 0, "shardgen.redact": 0, "shardgen.format": 0,
    "shardgen.storage": 1, "shardgen.imaging": 1,
    "shardgen.sources": 2, "shardgen.engines": 2,
    "shardgen.build": 3,
    "shardgen.commands": 4,
    "shardgen.cli": 5, "shardgen.__main__": 6,
    # loaders: what to read when, then bytes to samples, then samples to batches, then the public API
    "loaders.errors": 0, "loaders.dist": 0, "loaders.transform": 0, "loaders.device": 0,
    "loaders.order": 1,
    "loaders.read": 2,
    "loaders.deliver": 3,
    "loaders": 4, "loaders.loader": 4, "loaders.stylegan": 4,
}

#: What the loaders may use of shardgen: the format, storage and the shared helpers, nothing of the build side.
LOADERS_MAY_IMPORT = ("shardgen.format", "shardgen.storage", "shardgen.retry", "shardgen.redact", "shardgen.errors")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _absolute(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    """The absolute dotted name of a (possibly relative) import in module ``mod``."""
    if not level:
        return target or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports(mods: dict[str, Path]) -> list[tuple[str, str, str | None, int]]:
    """``(importer, imported module, imported name or None, line)`` for every import in the packages."""
    out = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [(mod, a.name, None, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(mod, is_pkg, node.level, node.module)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in mods:  # "from . import x": the module x
                        out.append((mod, sub, None, node.lineno))
                    else:
                        out.append((mod, base, a.name, node.lineno))
    return [i for i in out if i[1].split(".")[0] in PACKAGES]


def _owner(name: str, mods: dict[str, Path]) -> str:
    """The module a dotted name belongs to (``shardgen.format.Manifest`` -> ``shardgen.format``)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name


def layer(mod: str) -> int:
    """``mod``'s layer: its longest prefix in :data:`LAYERS` (a package root names its ``__init__`` only)."""
    best = max((p for p in LAYERS if mod == p or (p not in PACKAGES and mod.startswith(p + "."))), key=len,
               default=None)
    if best is None:
        raise AssertionError(f"{mod}: in no layer of LAYERS; add its folder there (and to docs/architecture.md)")
    return LAYERS[best]


MODS = all_modules()
EDGES = [(a, _owner(b, MODS), name, line) for a, b, name, line in imports(MODS)]


def test_every_module_has_a_layer():
    for mod in MODS:
        layer(mod)


def test_imports_go_down_the_layers_only():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)}), line {line}"
             for a, b, _, line in EDGES if b and layer(b) > layer(a)]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_loaders_use_only_the_format_storage_and_shared_helpers_of_shardgen():
    wrong = [f"{a} imports {b}, line {line}" for a, b, _, line in EDGES
             if a.startswith("loaders") and b.startswith("shardgen")
             and not any(b == p or b.startswith(p + ".") for p in LOADERS_MAY_IMPORT)]
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_modules():
    wrong = [f"{a} imports {name} from {b}, line {line}" for a, b, name, line in EDGES
             if name and name.startswith("_") and not name.startswith("__") and a != b]
    assert not wrong, "private names imported across modules:\n" + "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _is_ancestor(pkg: str, mod: str) -> bool:
    return mod.startswith(pkg + ".")


def test_no_import_cycle():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _, _ in EDGES:
        # A package's __init__ that hands on names of its own modules is its face, not a cycle.
        if b and a != b and not _is_ancestor(a, b) and not _is_ancestor(b, a):
            graph[a].add(b)
    found = _cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("bad", [("shardgen.format.names", "shardgen.cli"), ("loaders.order.plan", "loaders.read")])
def test_the_checker_catches_an_upward_import(bad):
    a, b = bad
    if a not in MODS or _owner(b, MODS) not in MODS:
        pytest.skip(f"{a} or {b} is not in this tree")
    assert layer(_owner(b, MODS)) > layer(a)
    assert _cycles({"x": {"y"}, "y": {"x"}}) == [["x", "y"]]


def test_the_public_import_paths_keep_working():
    """The restructuring moved modules, not the public API (issue 23): these paths still import."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import shardgen.build.lock\n"
            "assert 'shardgen.build.run' not in sys.modules, 'the lock rules pulled in the whole build'\n"
            "from shardgen.build import BuildConfig, BuildInterrupted, BuildResult, build, parse_splits\n"
            "from shardgen.storage import open_build, filesystem\n"
            "from shardgen.format import Manifest, ShardWriter, TarReader, read_target\n"
            "from loaders import make_loader, StyleGANShards\n"
            "assert callable(build) and callable(make_loader)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
