"""The module import graph (hack/import-graph.py): no cycles, and the operator never imports
the runtime (the operator's wheel and image ship without it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "hack/import-graph.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


def test_the_work_tree_has_no_cycle_and_no_operator_to_runtime_edge():
    g = _graph_tool()
    modules, _ = g.build(g._files(None, ROOT))
    assert "specdecode_operator.render" in modules and "specdecode_runtime.demo" in modules
    assert g.cycles(modules) == []
    assert g.forbidden_edges(modules) == []


def test_the_checker_finds_a_cycle_and_an_operator_to_runtime_edge():
    g = _graph_tool()
    files = [
        ("operator/specdecode_operator/__init__.py", ""),
        ("operator/specdecode_operator/a.py", "def f():\n    from . import b\n"),
        ("operator/specdecode_operator/b.py", "from .a import f\n"),
        ("operator/specdecode_operator/c.py", "from specdecode_runtime.x import y\n"),
        ("runtime/specdecode_runtime/__init__.py", ""),
        ("runtime/specdecode_runtime/x.py", "import os\ny = os.sep\n"),
    ]
    modules, _ = g.build(files)
    assert g.cycles(modules) == [["specdecode_operator.a", "specdecode_operator.b"]]
    assert g.forbidden_edges(modules) == [("specdecode_operator.c", "specdecode_runtime.x")]
    layer = g.layers(modules)
    assert layer["specdecode_operator.a"] == "core"
    assert layer["specdecode_runtime.x"] == "runtime"


def test_a_module_importing_io_or_the_shell_is_shell():
    g = _graph_tool()
    files = [
        ("operator/specdecode_operator/__init__.py", ""),
        ("operator/specdecode_operator/kube.py", "import lightkube\n"),
        ("operator/specdecode_operator/uses_kube.py", "from . import kube\n"),
        ("operator/specdecode_operator/pure.py", "import math\n"),
    ]
    layer = g.layers(g.build(files)[0])
    assert (layer["specdecode_operator.kube"], layer["specdecode_operator.uses_kube"],
            layer["specdecode_operator.pure"]) == ("shell", "shell", "core")


def test_a_read_of_another_packages_data_is_listed():
    g = _graph_tool()
    files = [
        ("operator/specdecode_operator/__init__.py", ""),
        ("runtime/specdecode_runtime/__init__.py", ""),
        ("runtime/specdecode_runtime/world.py",
         "from importlib import resources\nT = ('specdecode_operator', 'data/t.json')\n"),
        ("runtime/specdecode_runtime/other.py", "X = 'specdecode_operator'\n"),  # no importlib
    ]
    modules, _ = g.build(files)
    assert modules["specdecode_runtime.world"].reads_data_of == {"specdecode_operator"}
    assert modules["specdecode_runtime.other"].reads_data_of == set()
    assert modules["specdecode_runtime.world"].imports == set()
