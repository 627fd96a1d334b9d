"""The stand-in's import graph: it plays its own worlds (no operator code), and no module of
it imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import specdecode_runtime

RUNTIME = Path(specdecode_runtime.__file__).parent
STAND_IN = [RUNTIME / "hardware.py", *sorted((RUNTIME / "vllm_sim").glob("*.py"))]


def _module(path: Path) -> str:
    rel = path.relative_to(RUNTIME.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_the_stand_in_imports_nothing_of_the_operator() -> None:
    for path in STAND_IN:
        bad = {m for m in imports(path) if m.split(".")[0] == "specdecode_operator"}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_no_import_cycles_among_the_stand_in_modules() -> None:
    names = {_module(p): p for p in STAND_IN}
    graph = {name: {m for m in imports(p) if m in names and m != name}
             for name, p in names.items()}
    done: set[str] = set()

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, " -> ".join((*stack, node))
        if node in done:
            return
        for nxt in graph[node]:
            visit(nxt, (*stack, node))
        done.add(node)

    for name in graph:
        visit(name, ())
    # the command is a leaf: only ``python -m`` enters through it
    assert {n for n, deps in graph.items() if "specdecode_runtime.vllm_sim.cli" in deps} == {
        "specdecode_runtime.vllm_sim.__main__"}
