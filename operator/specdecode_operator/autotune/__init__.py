"""Draft-length autotuning. The decision is pure: ``decide(settings, state, window, now=...)``.

See docs/autotuner.md for the model and the safety gates.
"""

from .acceptance import Survival, from_counters
from .goodput import goodput
from .policy import OFF, Decision, Settings, State, Window, decide
from .step_cost import CostProfile, default_profile

__all__ = ["OFF", "CostProfile", "Decision", "Settings", "State", "Survival", "Window",
           "decide", "default_profile", "from_counters", "goodput"]
