"""Acceptance profiles reproduce the published numbers; schedules and sampling behave."""

from __future__ import annotations

import itertools

import pytest

from specdecode_runtime.vllm_sim.acceptance import (
    BUILTIN_PROFILES,
    AcceptanceProfile,
    AcceptanceSampler,
    ProfileError,
    iid,
    iid_for_rate,
    parse_profile,
    parse_schedule,
)

# Published anchors (docs/vllm-sim.md): acceptance rate = accepted / drafted at n drafts.
RATE_ANCHORS = [
    ("code", 2, 0.945), ("code", 5, 0.804),  # Qwen3.6-27B MTP, code
    ("creative", 2, 0.494), ("creative", 5, 0.251),  # Qwen3.6-27B MTP, creative
    ("gemma4", 3, 0.68),  # Gemma 4 31B MTP, llama.cpp n_max 3, aggregate
    ("gemma4-code", 3, 0.615),  # code .58-.65
    ("summarization", 3, 0.705),  # summarization .68-.73
    ("gemma4-creative", 3, 0.54),
]


@pytest.mark.parametrize(("name", "n", "rate"), RATE_ANCHORS)
def test_profiles_reproduce_published_acceptance_rates(name: str, n: int, rate: float) -> None:
    assert parse_profile(name).acceptance_rate(n) == pytest.approx(rate, abs=0.01)


def test_per_position_profiles_are_the_published_curves() -> None:
    assert parse_profile("gsm8k").survival(8) == (
        0.762, 0.616, 0.513, 0.424, 0.364, 0.309, 0.272, 0.237)
    assert parse_profile("chat").survival(10) == (
        0.74, 0.54, 0.41, 0.30, 0.22, 0.16, 0.12, 0.08, 0.05, 0.02)
    assert parse_profile("conversational") is parse_profile("chat")


def test_task_ordering_code_over_chat_over_creative() -> None:
    lengths = [parse_profile(n).mean_acceptance_length(4) for n in ("code", "chat", "creative")]
    assert lengths == sorted(lengths, reverse=True)
    assert lengths[0] - lengths[2] > 1.5


@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_tail_is_a_non_increasing_survival_curve(name: str) -> None:
    p = BUILTIN_PROFILES[name]
    s = (1.0, *p.survival(24))
    assert len(s) == 25
    assert all(0.0 <= x <= 1.0 for x in s)
    assert all(b <= a for a, b in itertools.pairwise(s))
    n = len(p.published)
    if 2 <= n < 24 and s[n - 1] > 0:
        # Past the data the conditional rate never exceeds the last observed one, and it is
        # held (a geometric tail, not one that keeps bending down)
        last_rate = s[n] / s[n - 1]
        assert s[n + 1] <= s[n] * last_rate + 1e-12
        if s[n] > 0:
            held = s[n + 1] / s[n]
            assert all(b == pytest.approx(a * held) for a, b in itertools.pairwise(s[n:]))


def test_iid_and_perfect_profiles() -> None:
    assert parse_profile("iid:0.7").survival(5) == pytest.approx([0.7**i for i in range(1, 6)])
    assert parse_profile("iid:0.7").mean_acceptance_length(3) == pytest.approx(
        (1 - 0.7**4) / (1 - 0.7))  # Leviathan et al., Eq. 1
    assert parse_profile("perfect").survival(30) == (1.0,) * 30
    assert parse_profile("none").survival(4) == (0.0,) * 4
    a = iid_for_rate(0.68, 3)
    assert (a + a**2 + a**3) / 3 == pytest.approx(0.68, abs=1e-9)


def test_explicit_lists_and_bad_specs() -> None:
    assert parse_profile("list:0.9/0.5/0.2").survival(3) == (0.9, 0.5, 0.2)
    assert parse_profile("0.8/0.4").survival(2) == (0.8, 0.4)
    for bad in ("nonsense", "iid:1.5", "iid:x", "list:0.5/0.9", "list:1.2", "0.5/x"):
        with pytest.raises(ProfileError):
            parse_profile(bad)
    with pytest.raises(ProfileError):
        AcceptanceProfile("empty", ())


def test_schedule_switches_at_the_given_seconds() -> None:
    s = parse_schedule("0:code,300:creative, 600:iid:0.5")
    assert s.at(0).name == "code"
    assert s.at(299.9).name == "code"
    assert s.at(300).name == "creative"
    assert s.at(10_000).survival(1) == (0.5,)
    assert parse_schedule("10:chat").at(0).name == "chat"  # before the first entry: the first
    for bad in ("code", "x:code", "300:code,0:chat", "0:unknown", ""):
        with pytest.raises(ProfileError):
            parse_schedule(bad)


def test_sampler_matches_survival_and_is_seeded() -> None:
    survival = parse_profile("gsm8k").survival(8)
    n = 20_000
    sampler = AcceptanceSampler(seed=1)
    draws = [sampler.accepted(survival) for _ in range(n)]
    for i, s in enumerate(survival, start=1):
        # P(accepted >= i) = S_i; 4 sigma of a binomial proportion at n=20000 is <= 0.015.
        assert sum(d >= i for d in draws) / n == pytest.approx(s, abs=0.015)
    again = AcceptanceSampler(seed=1)
    assert [again.accepted(survival) for _ in range(200)] == draws[:200]
    other = AcceptanceSampler(seed=2)
    assert [other.accepted(survival) for _ in range(200)] != draws[:200]


def test_iid_rejects_out_of_range() -> None:
    with pytest.raises(ProfileError):
        iid(-0.1)
