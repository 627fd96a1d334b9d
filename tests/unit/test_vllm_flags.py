"""The owned-flag guard agrees with argparse itself: a parser with every vLLM serve option
string (allow_abbrev, as vLLM's) decides which action an argument lands on, after vLLM's own
rewriting of underscores and dotted keys; the CRD's regexes and render's check must agree."""

from __future__ import annotations

import argparse
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specdecode_operator import vllm_flags
from specdecode_operator.render import InvalidSpec, check_args

OPTS = vllm_flags.options()
# Every spelling issue 11 found reaching vLLM 0.32.0 (checked there with vLLM's own parser).
ISSUE_SPELLINGS = [
    ('--speculative_config={"method":"ngram"}', "--speculative-config"),
    ("--tensor_parallel_size", "--tensor-parallel-size"),
    ("--disable_log_stats", "--disable-log-stats"),
    ("--speculative-conf", "--speculative-config"),
    ("--tensor-parallel", "--tensor-parallel-size"),
    ("--disable-log-stat", "--disable-log-stats"),
    ("--speculative-config.num_speculative_tokens=9", "--speculative-config"),
    ("--config", "--config"),
    ("-tp", "--tensor-parallel-size"),
    ("-sc", "--speculative-config"),
    ("-sc.num_speculative_tokens=9", "--speculative-config"),
    ("-t", "--tensor-parallel-size"),
    ("--spec-tokens=9", "--spec-tokens"),
    ("--served_model_name", "--served-model-name"),
]
NOT_OWNED = ["--model-impl=transformers", "--max-num-seqs", "--max-num-seqs=64", "64",
             "--gpu-memory-utilization=0.9", "--compilation-config.mode=3", "--conf",
             "--spec", "--config-format=hf", "--enforce-eager", "-O3", "-q", "--"]


class Ambiguous(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[no-untyped-def, override]
        raise Ambiguous(message)  # some argparse versions exit despite exit_on_error=False


def argparse_owner(arg: str) -> str | None:
    """Which owned action Python's argparse puts ``arg`` (as vLLM rewrites it) on."""
    parser = Parser(allow_abbrev=True, add_help=False, exit_on_error=False)
    for i, action in enumerate(OPTS.actions):
        parser.add_argument(*action, dest=f"a{i}", nargs="?", const="set")
    key = vllm_flags.flag_key(arg)
    if key is None:
        return None
    try:
        ns, _ = parser.parse_known_args([key, "v"])
    except (argparse.ArgumentError, Ambiguous):
        return None  # ambiguous: vLLM refuses to start, nothing is overridden
    for i, action in enumerate(OPTS.actions):
        if getattr(ns, f"a{i}") is not None and action[0] in vllm_flags.OWNED:
            return action[0]
    return None


def crd_owner(arg: str) -> str | None:
    hits = [f for f in vllm_flags.OWNED if re.match(vllm_flags.spelling_regex(f), arg)]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


@pytest.mark.parametrize(("arg", "owned"), ISSUE_SPELLINGS)
def test_issue_spellings_are_owned(arg: str, owned: str) -> None:
    assert argparse_owner(arg) == owned
    assert vllm_flags.owner(arg) == owned
    assert crd_owner(arg) == owned


@pytest.mark.parametrize("arg", NOT_OWNED)
def test_other_flags_pass(arg: str) -> None:
    assert argparse_owner(arg) is None
    assert vllm_flags.owner(arg) is None
    assert crd_owner(arg) is None


def spellings() -> st.SearchStrategy[str]:
    """Prefixes of real option strings, with underscores and =value / .key=value tails."""
    def build(option: str, cut: int, under: bool, tail: str) -> str:
        s = option[:max(2, len(option) - cut)]
        if under and s.startswith("--"):
            s = "--" + s[2:].replace("-", "_")
        return s + tail
    return st.builds(build, st.sampled_from(sorted(OPTS.strings)), st.integers(0, 12),
                     st.booleans(), st.sampled_from(["", "=1", ".key=1", ".a_b"]))


@given(spellings())
def test_guard_agrees_with_argparse(arg: str) -> None:
    expected = argparse_owner(arg)
    assert vllm_flags.owner(arg) == expected
    assert crd_owner(arg) == expected


def test_render_refuses_what_the_crd_refuses() -> None:
    spec = {"model": {"name": "org/m"}, "engineArgs": ["--max-num-seqs=8", "--tensor_parallel"]}
    with pytest.raises(InvalidSpec, match=re.escape("use spec.tensorParallelSize")):
        check_args(spec)
    with pytest.raises(InvalidSpec, match=re.escape("model.name must not start with '-'")):
        check_args({"model": {"name": "--port"}})
    check_args({"model": {"name": "org/m"}, "engineArgs": ["--max-num-seqs=8"]})
