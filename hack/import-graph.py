#!/usr/bin/env python3
"""The first-party module import graph of specdecode-operator, its cycles and its layers.

    python3 hack/import-graph.py                 # the working tree
    python3 hack/import-graph.py --rev 2e96297   # any commit, read from git (no checkout)
    python3 hack/import-graph.py --check         # exit 1 on a cycle or an operator->runtime edge

Pure stdlib (ast): nothing is imported or executed. Every import statement counts, also the
ones inside functions (a lazy import is still a dependency, and a cycle through one still
ties the two modules together). ``import a.b`` is an edge to ``a.b`` only: the implicit import
of the parent package is left out, or every package ``__init__`` re-exporting a submodule
would be a cycle.

Layers: ``core`` is an operator module that neither does I/O itself (no kopf, lightkube,
httpx, prometheus_client, asyncio, os, ...) nor imports a module that does; the other
operator modules are the ``shell``; ``runtime`` is specdecode_runtime (plane, stand-in, pod
runner, demo); ``tests`` and ``bench`` are those directories.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = {"specdecode_operator": "operator", "specdecode_runtime": "runtime"}
# Direct imports that make an operator module part of the shell (I/O, clocks of the event
# loop, the process environment).
IO_MODULES = {"kopf", "lightkube", "httpx", "httpx2", "prometheus_client", "asyncio", "aiohttp",
              "urllib", "socket", "subprocess", "os", "threading", "signal", "http"}
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Module:
    name: str
    path: str
    is_package: bool
    lines: int
    imports: set[str] = field(default_factory=set)  # first-party modules
    # First-party packages whose files this module reads with importlib.resources (a data
    # dependency an import graph does not show): a module importing importlib that names
    # another first-party package in a string constant.
    reads_data_of: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)  # top-level names of everything else


def _module_name(path: str) -> tuple[str, bool] | None:
    parts = Path(path).with_suffix("").parts
    for pkg, src in PACKAGES.items():
        if len(parts) >= 2 and parts[0] == src and parts[1] == pkg:
            mod = list(parts[1:])
            if mod[-1] == "__init__":
                return ".".join(mod[:-1]), True
            return ".".join(mod), False
    return None


def _files(rev: str | None, root: Path) -> Iterable[tuple[str, str]]:
    """(path relative to the repository, source) of every .py file."""
    if rev:
        names = subprocess.run(["git", "-C", str(root), "ls-tree", "-r", "--name-only", rev],
                               capture_output=True, text=True, check=True).stdout.split()
        for name in names:
            if name.endswith(".py"):
                yield name, subprocess.run(["git", "-C", str(root), "show", f"{rev}:{name}"],
                                           capture_output=True, text=True, check=True).stdout
        return
    for top in ("operator", "runtime", "tests", "bench", "hack"):
        for p in sorted((root / top).rglob("*.py")):
            rel = p.relative_to(root).as_posix()
            if "/.venv/" in rel or "/build/" in rel:
                continue
            yield rel, p.read_text()


def _resolve(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _first_party(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def build(files: Iterable[tuple[str, str]]) -> tuple[dict[str, Module], dict[str, int]]:
    """The first-party modules with their imports, and line counts of tests/bench/hack."""
    modules: dict[str, Module] = {}
    trees: dict[str, ast.AST] = {}
    other_lines: dict[str, int] = {}
    for path, source in files:
        named = _module_name(path)
        if named is None:
            top = path.split("/")[0]
            other_lines[top] = other_lines.get(top, 0) + len(source.splitlines())
            continue
        name, is_pkg = named
        modules[name] = Module(name, path, is_pkg, len(source.splitlines()))
        trees[name] = ast.parse(source, filename=path)
    for name, tree in trees.items():
        mod = modules[name]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, node)
                # `from pkg import sub` names a submodule when one exists.
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for t in targets:
                if _first_party(t):
                    while t and t not in modules:  # `import a.b.attr` -> nearest module
                        t = t.rpartition(".")[0]
                    if t and t != name:
                        mod.imports.add(t)
                elif t:
                    mod.external.add(t.split(".")[0])
        if "importlib" in mod.external:
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and node.value in modules and node.value.split(".")[0] in PACKAGES
                        and node.value.split(".")[0] != name.split(".")[0]):
                    mod.reads_data_of.add(node.value)
    return modules, other_lines


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(modules[v].imports):
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

    sys.setrecursionlimit(10_000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return sorted(out)


def forbidden_edges(modules: dict[str, Module]) -> list[tuple[str, str]]:
    """The operator must not depend on the runtime (it ships without it)."""
    return sorted((m.name, t) for m in modules.values() if m.name.startswith("specdecode_operator")
                  for t in m.imports if t.startswith("specdecode_runtime"))


def runtime_uses_operator(modules: dict[str, Module]) -> list[tuple[str, str]]:
    """Allowed (the runtime drives the operator), listed so that the coupling stays visible."""
    return sorted((m.name, t) for m in modules.values() if m.name.startswith("specdecode_runtime")
                  for t in m.imports if t.startswith("specdecode_operator"))


def layers(modules: dict[str, Module]) -> dict[str, str]:
    shell = {m.name for m in modules.values()
             if m.name.startswith("specdecode_operator") and m.external & IO_MODULES}
    changed = True
    while changed:  # importing a shell module makes a module shell
        changed = False
        for m in modules.values():
            if (m.name.startswith("specdecode_operator") and m.name not in shell
                    and m.imports & shell):
                shell.add(m.name)
                changed = True
    return {name: ("runtime" if name.startswith("specdecode_runtime")
                   else "shell" if name in shell else "core") for name in modules}


def report(modules: dict[str, Module], other_lines: dict[str, int]) -> dict[str, object]:
    layer = layers(modules)
    lines: dict[str, int] = {"core": 0, "shell": 0, "runtime": 0}
    for name, m in modules.items():
        lines[layer[name]] += m.lines
    for top in ("tests", "bench", "hack"):
        lines[top] = other_lines.get(top, 0)
    return {
        "modules": {n: {"layer": layer[n], "lines": m.lines, "imports": sorted(m.imports)}
                    for n, m in sorted(modules.items())},
        "cycles": cycles(modules),
        "operator_imports_runtime": [list(e) for e in forbidden_edges(modules)],
        "runtime_imports_operator": [list(e) for e in runtime_uses_operator(modules)],
        "package_data_reads": sorted([m.name, d] for m in modules.values()
                                     for d in m.reads_data_of),
        "lines": lines,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", help="read the tree of this git commit instead of the work tree")
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root")
    ap.add_argument("--json", action="store_true", help="print the whole report as JSON")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 on a cycle or on specdecode_operator importing specdecode_runtime")
    args = ap.parse_args(argv)
    rep = report(*build(_files(args.rev, args.root)))
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(f"# import graph of {args.rev or 'the work tree'} (module [layer, lines] -> imports)")
        for name, m in rep["modules"].items():  # type: ignore[union-attr]
            imports = ", ".join(m["imports"]) or "-"
            print(f"{name} [{m['layer']}, {m['lines']}] -> {imports}")
        print("\n# cycles")
        for c in rep["cycles"] or [["none"]]:  # type: ignore[union-attr]
            print("  " + " <-> ".join(c))
        print("\n# specdecode_operator -> specdecode_runtime edges")
        for a, b in rep["operator_imports_runtime"] or [["none", ""]]:  # type: ignore[union-attr]
            print(f"  {a} -> {b}" if b else "  none")
        print("\n# specdecode_runtime -> specdecode_operator edges (allowed)")
        for a, b in rep["runtime_imports_operator"] or [["none", ""]]:  # type: ignore[union-attr]
            print(f"  {a} -> {b}" if b else "  none")
        print("\n# package data read across distributions (importlib.resources)")
        for a, b in rep["package_data_reads"] or [["none", ""]]:  # type: ignore[union-attr]
            print(f"  {a} reads {b}" if b else "  none")
        print("\n# lines per layer")
        for k, v in rep["lines"].items():  # type: ignore[union-attr]
            print(f"  {k:8} {v}")
    bad = rep["cycles"] or rep["operator_imports_runtime"]
    if args.check and bad:
        for c in rep["cycles"]:  # type: ignore[union-attr]
            print("import cycle: " + " <-> ".join(c), file=sys.stderr)
        for a, b in rep["operator_imports_runtime"]:  # type: ignore[union-attr]
            print(f"the operator imports the runtime: {a} -> {b}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
