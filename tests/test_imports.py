"""No import cycles inside hearth/: a small walk over the import graph of every module (every import statement, also
inside functions — a lazy import hides a cycle, it does not end it; those under `if TYPE_CHECKING:` excluded),
failing with the modules of each cycle found."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hearth", "hearth_agent")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of `known` that `path` imports (`from a import b` counts a.b when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in tree.body:
        if _type_checking(node):
            continue
        for sub in ast.walk(node):  # imports inside functions count too: a lazy import hides a cycle, not ends it
            if isinstance(sub, ast.Import):
                out |= {a.name for a in sub.names if a.name in known}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    anchor = package.split(".")[: len(package.split(".")) - (sub.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                subs = {f"{base}.{a.name}" for a in sub.names if f"{base}.{a.name}" in known}
                out |= subs
                if base in known and len(subs) < len(sub.names):  # names defined by the package itself
                    out.add(base)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    known = set(files)
    edges = {name: imports_of(path, name, known) for name, path in files.items()}
    # Importing a.b.c runs a/__init__ and a/b/__init__ first (a module's own enclosing packages are already running).
    for name, targets in edges.items():
        for t in list(targets):
            parts = t.split(".")
            parents = {".".join(parts[:i]) for i in range(1, len(parts))} & known
            targets |= {p for p in parents if not name.startswith(p + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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


def test_the_walk_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_hearth() -> None:
    edges = graph()
    assert "hearth.session.service" in edges and "hearth.lifecycle.manager" in edges["hearth.session.service"]
    found = cycles(edges)
    assert found == [], "import cycles (move the shared part into a module both can import):\n" + "\n".join(
        " ↔ ".join(c) for c in found
    )


def test_no_package_cycles_between_lifecycle_session_and_clisandbox() -> None:
    """One direction only: session and clisandbox sit above lifecycle; lifecycle imports neither."""
    edges = graph()
    below = [m for m in edges if m.startswith("hearth.lifecycle")]
    above = ("hearth.session", "hearth.clisandbox", "hearth.api", "hearth.reconcile")
    bad = sorted(f"{m} → {t}" for m in below for t in edges[m] if t.startswith(above))
    assert bad == []
