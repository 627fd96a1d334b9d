"""SpecDecodeDeployment manifests the GitOps tests commit, and reading them back."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from specdecode_runtime.demo import demo_sdd

from ..kube_helpers import condition


def namespace_doc(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def sdd(name: str, namespace: str, *, tuned: bool = False, startup_delay: float = 2,
        **spec: Any) -> dict[str, Any]:
    """The demo's model (Gemma 4 31B + MTP drafter, code workload: initial K 3). ``tuned``:
    the autotuner on, on short windows (the demo's settings); otherwise mode Off."""
    doc = demo_sdd(epoch=0, shift_at=10**9, interval=5, window=30, cooldown=20)
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name, "namespace": namespace}
    s = doc["spec"]
    # The stand-in's whole workload stays code-heavy; startup delay paces rollouts.
    s["env"] = [{"name": "SPECDECODE_SIM_SCHEDULE", "value": "0:code"},
                {"name": "SPECDECODE_SIM_STARTUP_DELAY", "value": str(startup_delay)}]
    if not tuned:
        s["autotune"] = {"mode": "Off"}
    s.update(spec)
    return doc


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def k_of(obj: dict[str, Any] | None) -> int | None:
    return (((obj or {}).get("status") or {}).get("draftTokens") or {}).get("current")


def ready(obj: dict[str, Any] | None) -> bool:
    return bool(obj) and condition(obj or {}, "Ready").get("status") == "True" and \
        (obj or {}).get("status", {}).get("observedGeneration") == (obj or {})[
            "metadata"]["generation"]


def deployment_k(dep: dict[str, Any]) -> int:
    """num_speculative_tokens in the Deployment's vLLM --speculative-config argument."""
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = [*c.get("command", []), *c.get("args", [])]
    return int(json.loads(args[args.index("--speculative-config") + 1])["num_speculative_tokens"])
