"""Code, docs and tests point only at things a user of the project has: no machine paths or
sibling directories outside the repository, and every ``*.md`` they name exists here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = (".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".json")
# Vendored sources and unchanged captures of a real server are not the project's words.
SKIP = ("hack/kube/", "runtime/specdecode_runtime/vllm_sim/reference/metrics-")
# Built by concatenation so that this file does not match itself.
FORBIDDEN = ["/" + "work/", "../" + "shared", "shared" + "/notes", "shared" + "/fixtures",
             "fixtures" + "/vllm"]
MD_REF = re.compile(r"(?<![\w/.:-])((?:\.\./|\./)?[\w][\w./-]*\.md)\b")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True,
                             text=True, check=True).stdout.split()
        paths = [ROOT / p for p in out]
    except (OSError, subprocess.CalledProcessError):  # an unpacked tarball, not a clone
        paths = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [p for p in paths if p.is_file()]


def _files() -> list[tuple[str, str]]:
    out = []
    for p in _tracked():
        rel = p.relative_to(ROOT).as_posix()
        if rel.startswith(SKIP) or not (p.suffix in TEXT or p.name in {"Makefile", "Dockerfile"}):
            continue
        out.append((rel, p.read_text(errors="replace")))
    return out


def test_no_reference_to_paths_outside_the_repository():
    hits = [f"{rel}:{n}: {line.strip()}"
            for rel, text in _files() for n, line in enumerate(text.splitlines(), 1)
            if any(f in line for f in FORBIDDEN)]
    assert not hits, "\n".join(hits)


def test_every_markdown_file_named_exists():
    files = _files()
    md_names = {Path(rel).name for rel, _ in files if rel.endswith(".md")}
    missing = []
    for rel, text in files:
        for n, line in enumerate(text.splitlines(), 1):
            for ref in MD_REF.findall(line):
                if "//" in ref:
                    continue
                here = (ROOT / rel).parent / ref
                if here.is_file() or (ROOT / ref).is_file() or Path(ref).name in md_names:
                    continue
                missing.append(f"{rel}:{n}: {ref}")
    assert not missing, "\n".join(missing)
