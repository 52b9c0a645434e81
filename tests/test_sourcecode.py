"""The house rules, as tests: layering, no import cycles, stubs that match the kernels.

- The sans-IO modules (protocol codecs, state machines, policies) import no
  event loop, socket, process or thread module, and no clock: time comes in
  as ``now``.
- No module of the package imports itself through others, counting imports
  inside functions (they are where cycles hide) but not ``TYPE_CHECKING``
  ones.
- ``_fast.pyi`` lists exactly what ``_fast`` and its pure twin ``_pure``
  export, with the same parameter names; ``_io.pyi`` what ``_io`` exports.
- ``_speedups`` hands out every kernel of the twins.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "torrent"

#: Modules that must stay sans-IO (bytes and ``now`` in, events and actions out).
SANS_IO = [
    "bencoding", "metainfo", "magnet", "metadata", "picker", "leases", "choker", "peeraddr",
    "webseed", "spans", "merkle", "v2pieces", "piecelayers", "events", "snapshot", "engineapi",
    "wire/__init__", "wire/messages", "wire/framing", "wire/handshake", "wire/peer",
    "wire/extension", "wire/fastext", "wire/metadata_conn", "wire/mse", "wire/rc4",
    "wire/record",
    "tracker/http", "tracker/udp", "tracker/multitracker",
    "dht/__init__", "dht/krpc", "dht/routing", "dht/lookup", "dht/node",
]
#: What they may not import (top-level package names).
FORBIDDEN = {"asyncio", "socket", "multiprocessing", "subprocess", "threading", "selectors",
             "uvloop", "time", "signal"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (any depth, not TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            out.add(target)
            for a in node.names:  # "from . import x" imports the module x
                out.add(f"{target}.{a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _package_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


@pytest.mark.parametrize("name", SANS_IO)
def test_sans_io_modules_import_no_io(name: str) -> None:
    path = PKG / f"{name}.py"
    assert path.exists(), f"{path} is listed as sans-IO but does not exist"
    bad = {m for m in _imports(path) if m.split(".")[0] in FORBIDDEN}
    assert not bad, f"{name} is sans-IO but imports {sorted(bad)}"


def test_no_import_cycles() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodules is not a cycle of
    # modules (its submodules import siblings, not the package): drop those edges.
    for m in graph:
        graph[m] = {i for i in graph[m] if not m.startswith(i + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"


def _graph() -> dict[str, set[str]]:
    mods = _package_modules()
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_the_graph_sees_known_edges() -> None:
    """The walker itself: edges that exist must be found (else the rules prove nothing)."""
    g = _graph()
    assert "torrent.console" in g["torrent.cli"] and "torrent.units" in g["torrent.cli"]
    assert "torrent.tools.bench" in g["torrent.cli"]  # imported inside a function
    assert "torrent._speedups" in g["torrent.hashing"]  # `from . import x`: the module x
    assert "torrent.worker" not in g["torrent.net.peer"]  # the adapter knows no worker


def test_only_the_entry_points_import_the_cli() -> None:
    g = _graph()
    assert sorted(m for m, deps in g.items() if "torrent.cli" in deps) == ["torrent.__main__"]


def test_only_the_cli_imports_the_tools() -> None:
    users = {m for m, deps in _graph().items() if not m.startswith("torrent.tools")
             and any(d == "torrent.tools" or d.startswith("torrent.tools.") for d in deps)}
    assert users == {"torrent.cli"}


def test_the_cycle_check_sees_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: two modules importing each other (one inside a function)."""
    pkg = tmp_path / "torrent"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


def _stub(name: str) -> tuple[list[str], dict[str, list[str]]]:
    """The stub's ``__all__`` and the parameter names of its functions and classes' __init__."""
    tree = ast.parse((PKG / f"{name}.pyi").read_text())
    names: list[str] = []
    params: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names = [e.value for e in node.value.elts]  # type: ignore[attr-defined]
        elif isinstance(node, ast.FunctionDef):
            params[node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    params[node.name] = [a.arg for a in item.args.args[1:]]
    return names, params


def _signature(obj: object) -> list[str] | None:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # a compiled callable without a text signature
    return [p for p in sig.parameters if p != "self"]


def test_fast_stub_matches_fast_and_pure() -> None:
    fast = importlib.import_module("torrent._fast")
    pure = importlib.import_module("torrent._pure")
    names, params = _stub("_fast")
    assert sorted(names) == sorted(fast.__all__) == sorted(pure.__all__)
    for n in names:
        assert hasattr(fast, n), f"_fast lacks {n}"
        assert hasattr(pure, n), f"_pure lacks {n}"
        if n in params:
            pure_obj = getattr(pure, n)
            got = _signature(pure_obj.__init__ if inspect.isclass(pure_obj) else pure_obj)
            if inspect.isclass(pure_obj):
                got = [p for p in got or [] if p not in ("args", "kwargs")]
            assert got == params[n], f"_pure.{n}{got} differs from the stub {params[n]}"
            fast_sig = _signature(getattr(fast, n))
            if fast_sig is not None and not inspect.isclass(getattr(fast, n)):
                assert fast_sig == params[n], f"_fast.{n}{fast_sig} differs from the stub"


def test_io_stub_matches_io() -> None:
    io = importlib.import_module("torrent._io")
    names, params = _stub("_io")
    assert sorted(names) == sorted(io.__all__)
    for n in names:
        assert hasattr(io, n), f"_io lacks {n}"
    assert "IOThread" in params


def test_speedups_hand_out_every_twin_kernel() -> None:
    sp = importlib.import_module("torrent._speedups")
    pure = importlib.import_module("torrent._pure")
    kernels = {n for n in pure.__all__ if callable(getattr(pure, n))} - {
        "backend", "available_backends"}  # which SHA-1 backend: a property of _fast itself
    missing = kernels - set(sp.__all__)
    assert not missing, f"_speedups does not export {sorted(missing)}"
    assert sp.IMPLEMENTATION in ("native", "pure")


def test_every_package_is_in_the_distribution() -> None:
    """A package missing from pyproject's list works in a checkout and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(PKG.parent).parts[:-1]) for p in PKG.rglob("__init__.py")}
    assert found == listed
