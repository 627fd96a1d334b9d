"""Argo CD's custom health check for SpecDecodeDeployment, evaluated the way Argo CD does it:
the Lua block of docs/gitops.md run by gopher-lua (the Lua 5.1 interpreter Argo CD embeds;
``glua`` is built by hack/build-flux.sh) with the live object as the global ``obj``.

Argo CD itself does not run here; only its health-check contract (a script that sees ``obj``
and returns ``{status = ..., message = ...}``) is exercised."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "gitops.md"
MARK = "<!-- argocd-health-check: evaluated by tests/gitops/argocd.py -->"


def health_script() -> str:
    """The Lua after the marker in docs/gitops.md (the one users copy), as it is there."""
    text = DOC.read_text()
    after = text[text.index(MARK):]
    m = re.search(r"```lua\n(.*?)```", after, re.S)
    if not m:
        raise AssertionError(f"no ```lua block after {MARK} in {DOC}")
    return m.group(1)


def lua_literal(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(c if c.isalnum() or c in " .,:;-_/()[]{}'=<>+*#@!?%" else
                             f"\\{ord(c)}" for c in v) + '"'
    if isinstance(v, list):
        return "{" + ", ".join(lua_literal(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(x)}"
                               for k, x in v.items() if x is not None) + "}"
    raise TypeError(type(v))


def argocd_health(glua: Path, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) the health check returns for ``obj``."""
    program = (f"obj = {lua_literal(obj)}\n"
               f"local function check()\n{health_script()}\nend\n"
               "local hs = check()\n"
               "print(hs.status)\nprint(hs.message or '')\n")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write(program)
        f.flush()
        out = subprocess.run([str(glua), f.name], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"glua failed: {out.stderr or out.stdout}")
    status, _, message = out.stdout.partition("\n")
    return status.strip(), message.strip()
