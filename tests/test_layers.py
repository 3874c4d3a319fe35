"""Layers, low → high: every module imports only its own layer or a lower one (the controller↔agent contract,
`hearth_agent.contract*`, aside: everyone may import it), and no production layer (L0–L11) imports hearth_example.
The graph is tests/test_imports.py's (every import statement, also lazy ones inside functions; those under
`if TYPE_CHECKING:` excluded; importing a.b.c also imports the packages a and a.b), extended to hearth_example."""

from __future__ import annotations

from tests.test_imports import PACKAGES, ROOT, cycles, imports_of, module_name

# One row per layer, lowest first; a module belongs to the longest prefix listed (whole dotted parts).
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "hearth",
        "hearth.errors",
        "hearth.log",
        "hearth.observe",
        "hearth.childproc",
        "hearth.ratelimit",
        "hearth_agent",
    ),  # L0
    ("hearth.config",),  # L1
    ("hearth.store", "hearth.rfb"),  # L2
    ("hearth.webhooks", "hearth.vault"),  # L3
    ("hearth.fabric", "hearth.egress", "hearth.proxy"),  # L4
    ("hearth.guest", "hearth.image", "hearth.sandbox"),  # L5 drivers
    ("hearth.agentlink", "hearth.lifecycle"),  # L6
    ("hearth.providers",),  # L7 definitions only
    ("hearth.clisandbox", "hearth.session", "hearth.signin", "hearth.prompts", "hearth.cluster"),  # L8
    ("hearth.gateway", "hearth.reconcile", "hearth.doctor"),  # L9
    ("hearth.api",),  # L10
    ("hearth.controller", "hearth.edge"),  # L11 composition root
    ("hearth.cli", "hearth.__main__", "hearth.serving", "hearth.standins", "hearth_example"),  # L12 tools
)
PRODUCTION = 11  # L0–L11; L12 is the tools (CLI, stand-ins, checks) and the example provider
CONTRACT = "hearth_agent.contract"
EXAMPLE = "hearth_example"

# Today's violations while issue 22 is worked on, as (folder, folder) → who removes it. The lead empties this list at
# the end; test_allowed_is_current fails on an entry nothing needs any more, so shrink it as you go.
ALLOWED: dict[tuple[str, str], str] = {}

# Folders of one layer may import each other, but not in a circle. Imports (folder, folder) left out of that check
# while issue 22 is worked on → who removes them.
ALLOWED_IN_CIRCLES: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for n, row in enumerate(LAYERS):
        for prefix in row:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), n)
    return None if best is None else best[1]


def unit_of(module: str) -> str:
    """The entry of LAYERS a module belongs to (its folder, or the module for a top-level file)."""
    layer = layer_of(module)
    assert layer is not None
    return max(
        (p for p in LAYERS[layer] if module == p or module.startswith(p + ".")),
        key=len,
    )


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in (*PACKAGES, EXAMPLE) for p in (ROOT / pkg).rglob("*.py")}
    known = set(files)
    edges = {name: imports_of(path, name, known) for name, path in files.items()}
    for name, targets in edges.items():  # importing a.b.c runs a/__init__ and a/b/__init__ first
        for t in list(targets):
            parts = t.split(".")
            parents = {".".join(parts[:i]) for i in range(1, len(parts))} & known
            targets |= {p for p in parents if not name.startswith(p + ".")}
    return edges


def violations(edges: dict[str, set[str]]) -> list[tuple[str, str, int, int]]:
    """(module, imported module, its layer, the imported one's layer) for each import of a higher layer."""
    out = []
    for m, targets in edges.items():
        a = layer_of(m)
        assert a is not None
        for t in targets:
            b = layer_of(t)
            assert b is not None
            if b > a and not (t == CONTRACT or t.startswith(CONTRACT + ".")):
                out.append((m, t, a, b))
    return sorted(out)


def _show(found: list[tuple[str, str, int, int]]) -> str:
    return "\n".join(f"{m} → {t} (layer L{a} → layer L{b})" for m, t, a, b in found)


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in graph() if layer_of(m) is None)
    assert missing == [], "modules in no layer (add their folder to LAYERS in tests/test_layers.py):\n" + "\n".join(
        missing
    )


def test_layer_lookup() -> None:
    assert layer_of("hearth") == 0 and layer_of("hearth.errors") == 0 and layer_of("hearth_agent.server") == 0
    assert layer_of("hearth.config") == 1 and layer_of("hearth.config.egress") == 1
    assert layer_of("hearth.controller") == 11 and layer_of("hearth.controllers") == 0  # whole dotted parts only
    assert layer_of("hearth.standins.internet") == 12 and layer_of("hearth_example.idp") == 12
    assert violations({"hearth.store.db": {"hearth.api.app"}, "hearth.api.app": {"hearth.store.db"}}) == [
        ("hearth.store.db", "hearth.api.app", 2, 10)
    ]
    assert violations({"hearth.errors": {"hearth_agent.contract"}}) == []


def test_no_module_imports_a_higher_layer() -> None:
    found = [v for v in violations(graph()) if (unit_of(v[0]), unit_of(v[1])) not in ALLOWED]
    assert found == [], "imports of a higher layer (move the shared piece down, or pass a callable in):\n" + _show(
        found
    )


def test_allowed_is_current() -> None:
    """Each ALLOWED entry still names a real violation, each ALLOWED_IN_CIRCLES entry a real import; remove the
    ones fixed."""
    edges = graph()
    seen = {(unit_of(m), unit_of(t)) for m, t, _, _ in violations(edges)}
    imports = {(unit_of(m), unit_of(t)) for m, ts in edges.items() for t in ts}
    stale = sorted(f"{a} → {b} ({who})" for (a, b), who in ALLOWED.items() if (a, b) not in seen)
    stale += sorted(f"{a} → {b} ({who})" for (a, b), who in ALLOWED_IN_CIRCLES.items() if (a, b) not in imports)
    assert stale == [], "ALLOWED entries no longer needed (remove them):\n" + "\n".join(stale)


def test_production_never_imports_the_example() -> None:
    edges = graph()
    found = sorted(
        f"{m} → {t}"
        for m, targets in edges.items()
        if (layer_of(m) or 0) <= PRODUCTION
        for t in targets
        if (t == EXAMPLE or t.startswith(EXAMPLE + ".")) and (unit_of(m), EXAMPLE) not in ALLOWED
    )
    assert found == [], "production code (L0–L11) imports hearth_example:\n" + "\n".join(found)


def folder_cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Circles between the folders of LAYERS (with every higher-layer import gone, all within one layer)."""
    folders: dict[str, set[str]] = {}
    for m, targets in edges.items():
        for t in targets:
            if unit_of(m) != unit_of(t):
                folders.setdefault(unit_of(m), set()).add(unit_of(t))
    return [frozenset(c) for c in cycles(folders)]


def test_no_circles_between_folders_of_a_layer() -> None:
    edges = {
        m: {t for t in ts if layer_of(t) == layer_of(m) and (unit_of(m), unit_of(t)) not in ALLOWED_IN_CIRCLES}
        for m, ts in graph().items()
    }
    found = sorted(" ↔ ".join(sorted(c)) for c in folder_cycles(edges))
    assert found == [], "folders importing each other in a circle:\n" + "\n".join(found)
