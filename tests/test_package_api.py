"""The package's public surface and its layering, checked from the source.

- ``torrent`` exports the API (``download``, ``seed``, ``create``,
  ``verify``, ``load``) and the error classes, imports none of the API's
  modules until one is used (every worker process imports ``torrent``), and
  keeps ``create``/``verify`` the functions even once the submodules of the
  same names are imported.
- Imports among the package's modules (read from the source, module and
  function level, not ``TYPE_CHECKING`` blocks) form no cycle; only the entry
  points import the CLI; only the CLI imports the tools.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torrent

PKG = Path(torrent.__file__).resolve().parent
API = {
    "download": "torrent.coordinator",
    "seed": "torrent.coordinator",
    "create": "torrent.create",
    "verify": "torrent.verify",
    "load": "torrent.metainfo",
}
ERRORS = ["DiskFull", "FastTorrentError", "Incomplete", "Interrupted", "InvalidTorrent",
          "RemoteProtocolError", "ResourceExhausted", "StorageError", "TrackerError",
          "UsageError"]


# -- the public API ---------------------------------------------------------------------------


def test_all_lists_the_api_and_the_errors() -> None:
    assert set(torrent.__all__) == set(API) | set(ERRORS) | {"__version__"}
    for name in torrent.__all__:
        assert getattr(torrent, name) is not None, name
    for name in ERRORS:
        assert issubclass(getattr(torrent, name), torrent.FastTorrentError)


def test_api_names_are_the_functions() -> None:
    from torrent.coordinator import download, seed
    from torrent.create import create_torrent
    from torrent.metainfo import load
    from torrent.verify import verify_data

    # the submodules torrent.create and torrent.verify are imported by now
    assert torrent.download is download and torrent.seed is seed
    assert torrent.create is create_torrent
    assert torrent.verify is verify_data
    assert torrent.load is load
    assert sys.modules["torrent.create"].create_torrent is create_torrent


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        torrent.no_such_thing  # noqa: B018


def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter with this package first on the path; its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PKG.parent), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=True, env=env)
    return r.stdout


def test_import_torrent_is_cheap() -> None:
    loaded = json.loads(_fresh(
        "import json, sys, torrent\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('torrent'))))"))
    assert loaded == ["torrent", "torrent.errors"]


def test_create_and_verify_stay_functions_whatever_is_imported_first() -> None:
    out = _fresh(
        "import torrent.create, torrent.verify\n"  # the submodules first
        "import torrent\n"
        "from torrent import create, verify\n"
        "print(create.__name__, verify.__name__, torrent.create.__name__)")
    assert out.split() == ["create_torrent", "verify_data", "create_torrent"]


# -- layering ---------------------------------------------------------------------------------


def _modules() -> dict[str, Path | None]:
    """Every module of the package by dotted name; None for a compiled one (no imports)."""
    out: dict[str, Path | None] = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(("torrent", *p.relative_to(PKG).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = p
    for p in PKG.rglob("*.pyx"):
        out[".".join(("torrent", *p.relative_to(PKG).with_suffix("").parts))] = None
    return out


def _imports(name: str, path: Path, mods: dict[str, Path | None]) -> set[str]:
    """The package's modules that ``name`` imports (outside ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for body in node.body for n in ast.walk(body)}
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{parent}.{node.module}" if node.module else parent
            else:
                module = node.module or ""
            for a in node.names:  # `from . import x`: the submodule x if there is one
                sub = f"{module}.{a.name}"
                out.add(sub if sub in mods else module)
    return {m for m in out if m in mods and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: (_imports(m, p, mods) if p is not None else set()) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_known_edges() -> None:
    """The walker itself: edges that exist must be found (else the next tests prove nothing)."""
    g = _graph()
    assert "torrent.console" in g["torrent.cli"] and "torrent.units" in g["torrent.cli"]
    assert "torrent.tools.bench" in g["torrent.cli"]  # imported inside a function
    assert "torrent.ports" in g["torrent.coordinator"]
    assert "torrent._fast" in g["torrent.hashing"]  # `from . import _fast`: the module


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_only_the_entry_points_import_the_cli() -> None:
    g = _graph()
    assert sorted(m for m, deps in g.items() if "torrent.cli" in deps) == ["torrent.__main__"]


def test_only_the_cli_imports_the_tools() -> None:
    g = _graph()
    users = {m for m, deps in g.items() if not m.startswith("torrent.tools")
             and any(d == "torrent.tools" or d.startswith("torrent.tools.") for d in deps)}
    assert users == {"torrent.cli"}
