"""SDD names -> child names and label values: every name the apiserver accepts for an SDD
yields children the apiserver accepts (checked here against Kubernetes' own validation
rules, and on the real plane in tests/operator/test_names_live.py)."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from specdecode_operator import names
from specdecode_operator.render import LABEL_SDD, render

# k8s.io/apimachinery/pkg/util/validation: IsDNS1035Label, IsValidLabelValue, IsDNS1123Subdomain
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = re.compile(rf"^{DNS1123_LABEL}(\.{DNS1123_LABEL})*$")

sdd_names = st.lists(st.from_regex(rf"^{DNS1123_LABEL}$", fullmatch=True), min_size=1,
                     max_size=12).map(".".join).map(lambda s: s[:253].rstrip(".-")).filter(
                         lambda s: bool(s) and DNS1123_SUBDOMAIN.match(s))


def sdd(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "u"},
            "spec": {"model": {"name": "org/m"}, "drafter": {"method": "mtp"}}}


def by_kind(name: str) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in render(sdd(name), 4, pod_monitor_available=True)}


@given(sdd_names)
def test_every_valid_sdd_name_gives_valid_children(name: str) -> None:
    objs = by_kind(name)
    svc = objs["Service"]["metadata"]["name"]
    assert DNS1035.match(svc) and len(svc) <= 63
    for kind in ("Deployment", "PodDisruptionBudget", "PodMonitor"):
        child = objs[kind]["metadata"]["name"]
        # ReplicaSets append "-<pod-template-hash>" (up to 10 characters).
        assert DNS1123_SUBDOMAIN.match(child) and len(child) <= 63, (kind, child)
    pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for m in objs.values():
        for v in [*m["metadata"]["labels"].values(), *pod_labels.values()]:
            assert LABEL_VALUE.match(v) and len(v) <= 63, v
    selector = objs["Service"]["spec"]["selector"]
    assert all(pod_labels[k] == v for k, v in selector.items())
    # The full name is recoverable from every child and from the pods.
    pod_ann = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert names.sdd_name(pod_labels, pod_ann, LABEL_SDD) == name
    for m in objs.values():
        assert names.sdd_name(m["metadata"]["labels"], m["metadata"].get("annotations") or {},
                              LABEL_SDD) == name


def test_names_that_fit_are_used_unchanged() -> None:
    objs = by_kind("gemma4-31b")
    assert {m["metadata"]["name"] for m in objs.values()} == {"gemma4-31b"}
    assert objs["Service"]["spec"]["selector"] == {LABEL_SDD: "gemma4-31b"}
    for m in objs.values():
        assert names.ANNOTATION_NAME not in (m["metadata"].get("annotations") or {})
    pod_ann = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert names.ANNOTATION_NAME not in pod_ann


def test_dotted_name_keeps_its_deployment_and_label_and_gets_a_dns_service_name() -> None:
    objs = by_kind("llama-3.1-8b")
    # Deployment and PDB as earlier versions created them: no rollout on upgrade.
    assert objs["Deployment"]["metadata"]["name"] == "llama-3.1-8b"
    assert objs["PodDisruptionBudget"]["metadata"]["name"] == "llama-3.1-8b"
    assert objs["Deployment"]["spec"]["selector"]["matchLabels"] == {LABEL_SDD: "llama-3.1-8b"}
    svc = objs["Service"]["metadata"]["name"]
    assert svc.startswith("llama-3-1-8b-") and len(svc) == len("llama-3-1-8b-") + 10


def test_long_names_get_distinct_stable_short_forms() -> None:
    a, b = "a" * 60 + "-one", "a" * 60 + "-two"
    assert names.short_name(a) != names.short_name(b)
    assert names.short_name(a) == names.short_name(a)
    assert len(names.short_name("x" * 253)) == 63
    assert names.short_name("7b.chat").startswith("sdd-7b-chat-")
    assert names.label_value("x" * 63) == "x" * 63
    assert names.label_value("x" * 64) != "x" * 64
