"""The layers, checked by walking every import (lazy ones inside functions too).

- the kit (dispatcher.common, .wire, .results and dispatcher/__init__) never imports the
  hub, the views or the dispatcher's CLI; inside it, common is the bottom;
- the observer and the runner import only the kit, and never each other;
- the views render records and never import the hub;
- a module of common/ or wire/ serves more than one package (one used by a single
  package lives there); results/ is the users' file format, the hub's to write and any
  reader's to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("dispatcher", "observer", "runner")
KIT = {"dispatcher", "dispatcher.common", "dispatcher.wire", "dispatcher.results"}

# Which layer may import which (a layer may always import itself).
ALLOWED = {
    "dispatcher": {"dispatcher.common"},
    "dispatcher.common": set(),
    "dispatcher.wire": {"dispatcher", "dispatcher.common"},
    "dispatcher.results": {"dispatcher", "dispatcher.common", "dispatcher.wire"},
    "dispatcher.views": KIT,
    "dispatcher.hub": KIT | {"dispatcher.views"},
    "dispatcher.cli": KIT | {"dispatcher.views", "dispatcher.hub"},
    "observer": KIT,
    "runner": KIT,
}


def layer(module: str) -> str:
    """dispatcher.hub.store -> dispatcher.hub; dispatcher.cli and __main__ -> the CLI edge."""
    parts = module.split(".")
    if parts[0] != "dispatcher":
        return parts[0]
    if len(parts) == 1 or parts[1] == "__init__":
        return "dispatcher"
    if parts[1] in ("cli", "__main__"):
        return "dispatcher.cli"
    return "dispatcher." + parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every polyarch module `path` imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] in SOURCES)
    return out


def edges() -> list[tuple[str, str]]:
    out = []
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            for target in imports(path):
                if (ROOT / (target.replace(".", "/") + ".py")).exists() or (ROOT / target.replace(".", "/")).is_dir():
                    out.append((module_name(path), target))
    return out


def violations(found: list[tuple[str, str]]) -> list[str]:
    bad = []
    for source, target in found:
        a, b = layer(source), layer(target)
        if a != b and b not in ALLOWED.get(a, set()):
            bad.append(f"{source} imports {target}: {a} may not import {b}")
    return bad


def test_no_forbidden_import():
    assert violations(edges()) == []


def test_the_check_catches_forbidden_imports():
    # The rules themselves, on made-up edges: each of these must be refused.
    made_up = [("runner.checkout", "observer.mirror"), ("observer.service", "runner.spool"),
               ("runner.service", "dispatcher.hub.store"), ("dispatcher.wire.protocol", "dispatcher.hub.server"),
               ("dispatcher.common.config", "dispatcher.wire.protocol"), ("dispatcher.views.html", "dispatcher.hub.reads"),
               ("dispatcher.results.record", "dispatcher.views.records")]
    assert len(violations(made_up)) == len(made_up)
    assert violations([("dispatcher.hub.server", "dispatcher.wire.protocol"),
                       ("runner.service", "dispatcher.common.names")]) == []


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    # The edges really come from the files: the runner's CLI imports its service lazily.
    found = edges()
    assert ("runner.cli", "runner.service") in found
    assert any(s.startswith("observer.") and t.startswith("dispatcher.wire") for s, t in found)


def test_kit_modules_serve_more_than_one_package():
    # Users count through the kit: config serves everyone, so what config uses does too.
    found = edges()
    users: dict[str, set[str]] = {}
    for source, target in found:
        if layer(target) in ("dispatcher.common", "dispatcher.wire") and target.count(".") == 2:
            users.setdefault(target, set()).add(_package(source))
    changed = True
    while changed:
        changed = False
        for source, target in found:
            if source in users and target in users and not users[source] <= users[target]:
                users[target] |= users[source]
                changed = True
    lonely = {m: sorted(u) for m, u in users.items() if len(u - {"kit"}) < 2}
    assert lonely == {}, f"kit modules used by one package only (move them there): {lonely}"


def _package(module: str) -> str:
    """The three parts that use the kit: the dispatcher's hub side, the observer, the runner."""
    top = module.split(".")[0]
    if top != "dispatcher":
        return top
    return "kit" if layer(module) in KIT else "hub"
