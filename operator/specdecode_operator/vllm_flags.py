"""Which ``engineArgs`` vLLM would read as a flag the operator renders itself.

Derived from how ``vllm serve`` parses (vLLM's FlexibleArgumentParser over argparse), not from
a list of spellings:

- ``--flag=value`` and ``--flag value`` are the same flag;
- in a ``--`` flag, underscores before the first ``.`` are dashes (``--tensor_parallel_size``);
- ``--flag.key=value`` / ``--flag.key value`` sets one key of a dict-valued flag (vLLM then
  passes ``--flag '{"key": value}'``, replacing what the operator rendered);
- argparse accepts any prefix of an option string that matches no other option string
  (``--tensor-parallel`` is ``--tensor-parallel-size``; ``-t`` is ``-tp``);
- ``--config FILE`` reads more flags from a YAML file the operator never sees.

The option strings come from vLLM's serve parser, shipped as data (``data/vllm-serve-options
.json``, provenance in the file and in docs/api.md), so the prefixes that are unambiguous are
computed against every option vLLM has. Pure, no I/O beyond reading that packaged file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_SPECULATION = "spec.drafter and spec.draftTokens"
# Flags the operator renders (or that would hide flags from it), keyed by vLLM's first option
# string for the action, with the field a user sets instead.
OWNED: dict[str, str] = {
    "--speculative-config": _SPECULATION,
    "--spec-method": _SPECULATION,
    "--spec-model": _SPECULATION,
    "--spec-tokens": _SPECULATION,
    "--model": "spec.model.name",
    "--served-model-name": "spec.model.servedName",
    "--revision": "spec.model.revision",
    "--max-model-len": "spec.model.maxModelLen",
    "--tensor-parallel-size": "spec.tensorParallelSize",
    "--port": "spec.service.port",
    "--host": "nothing (the operator binds 0.0.0.0 inside the pod)",
    "--disable-log-stats": "nothing (it turns off the metrics the autotuner reads)",
    "--hf-token": "spec.model.hfTokenSecretRef",
    "--config": "one engineArgs entry per flag (a config file hides flags from these checks)",
}


@dataclass(frozen=True)
class Options:
    vllm: str
    actions: tuple[tuple[str, ...], ...]

    @property
    def strings(self) -> frozenset[str]:
        return frozenset(o for a in self.actions for o in a)

    def action(self, first: str) -> tuple[str, ...]:
        for a in self.actions:
            if a[0] == first:
                return a
        raise KeyError(f"{first} is not a vLLM {self.vllm} serve option")


@cache
def options() -> Options:
    """vLLM's serve option strings, one tuple per argparse action."""
    data = json.loads(resources.files(__package__).joinpath(
        "data/vllm-serve-options.json").read_text())
    return Options(vllm=data["vllm"], actions=tuple(tuple(a) for a in data["actions"]))


def flag_key(arg: str) -> str | None:
    """The option string argparse sees for one argument after vLLM's rewriting, or None when
    the argument is not a flag (a value, or the model)."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    key = arg.split("=", 1)[0].split(".", 1)[0]
    if key.startswith("--"):
        key = "--" + key[2:].replace("_", "-")
    return key


def resolve(key: str, opts: Options | None = None) -> str | None:
    """The option string argparse resolves ``key`` to (exact, else the only option string it
    is a prefix of); None when unknown or ambiguous (vLLM then refuses to start)."""
    strings = (opts or options()).strings
    if key in strings:
        return key
    matches = [o for o in strings if o.startswith(key)]
    return matches[0] if len(matches) == 1 else None


def owner(arg: str, opts: Options | None = None) -> str | None:
    """The owned flag (an OWNED key) that vLLM reads ``arg`` as, or None."""
    opts = opts or options()
    key = flag_key(arg)
    if key is None:
        return None
    target = resolve(key, opts)
    for first in OWNED:
        if target in opts.action(first):
            return first
    return None


def unique_prefix_length(option: str, opts: Options) -> int:
    """Length of the shortest prefix of ``option`` that argparse resolves to it."""
    minimum = 3 if option.startswith("--") else 2  # a prefix needs a character after "-"/"--"
    for n in range(minimum, len(option) + 1):
        if resolve(option[:n], opts) == option:
            return n
    return len(option)


def spelling_regex(first: str, opts: Options | None = None) -> str:
    """An RE2 regex (CEL ``matches``) for every argument vLLM reads as owned flag ``first``."""
    opts = opts or options()
    alts = []
    for option in opts.action(first):
        n = unique_prefix_length(option, opts)
        long = option.startswith("--")

        def lit(s: str, long: bool = long) -> str:
            return "".join("[-_]" if long and c == "-" else c if c.isalnum() or c == "-"
                           else re.escape(c) for c in s)

        head, rest = option[:n], option[n:]
        tail = ""
        for c in reversed(rest):
            tail = f"(?:{lit(c)}{tail})?"
        prefix = "--" + lit(head[2:]) if long else lit(head)
        alts.append(prefix + tail)
    # The key ends at "=" (a value) or "." (a dotted sub-key of a dict-valued flag).
    return f"^(?:{'|'.join(alts)})(?:[=.].*)?$"


def examples(first: str, opts: Options | None = None) -> list[str]:
    """A few spellings vLLM accepts for ``first``, for error messages."""
    opts = opts or options()
    out = [first]
    for option in opts.action(first)[1:]:
        out.append(option)
    n = unique_prefix_length(first, opts)
    if n < len(first):
        out.append(first[:n])
    if "-" in first[2:]:
        out.append("--" + first[2:].replace("-", "_"))
    out.append(f"{first}=...")
    return out


def problems(args: list[str], opts: Options | None = None) -> list[str]:
    """One message per argument vLLM would read as an owned flag (same text as the CRD's)."""
    return [message(first) for a in args if (first := owner(a, opts))]


def message(first: str) -> str:
    spellings = ", ".join(examples(first))
    if first == "--config":
        return (f"engineArgs must not contain --config ({spellings}): vLLM would read flags "
                f"from a file the operator cannot check; use {OWNED[first]}")
    return (f"engineArgs must not contain {first} (in any spelling vLLM reads as it: "
            f"{spellings}): the operator renders it; use {OWNED[first]}")
