"""How a SpecDecodeDeployment's name maps to its children's names and label values.

The apiserver accepts SDD names up to 253 characters with dots (DNS-1123 subdomains, e.g.
``llama-3.1-8b``). Its children are stricter: a Service name is a DNS-1035 label (at most 63
characters, no dots, starts with a letter) and label values have at most 63 characters. A name
that already fits is used unchanged (so objects created by earlier versions keep their names
and pods, no rollout on upgrade); one that does not gets a stable short form: a readable
prefix and a hash of the full name. The full name then rides along in an annotation, which
is where the pod runner and the PodMonitor read it for Prometheus' ``sdd`` label.

Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
HASH_LEN = 10
ANNOTATION_NAME = "specdecode.io/deployment-name"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:HASH_LEN]


def short_name(name: str) -> str:
    """A DNS-1035 label (hence also a valid label value) derived from ``name``, stable across
    versions: the name with dots made dashes, cut to fit, then ``-<hash of the full name>``
    (two SDDs with a common 52-character prefix still differ)."""
    base = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if not base[:1].isalpha():
        base = f"sdd-{base}"
    return f"{base[:MAX_LABEL - HASH_LEN - 1].rstrip('-')}-{_digest(name)}"


def label_value(name: str) -> str:
    """The ``specdecode.io/deployment`` label value that selects the SDD's pods."""
    return name if len(name) <= MAX_LABEL else short_name(name)


def child_name(name: str) -> str:
    """Name of the Deployment, PodDisruptionBudget and PodMonitor (DNS-1123 subdomains; kept
    short so ReplicaSet and pod names derived from the Deployment's stay valid)."""
    return name if len(name) <= MAX_LABEL else short_name(name)


CANARY_SUFFIX = "-canary"


def canary_name(name: str) -> str:
    """Name of the canary Deployment (canary mode): the Deployment's name and ``-canary``,
    within the same 63 characters (a hashed short form of ``<name>-canary`` past that)."""
    child = child_name(name)
    if len(child) + len(CANARY_SUFFIX) <= MAX_LABEL:
        return child + CANARY_SUFFIX
    return short_name(name + CANARY_SUFFIX)


def service_name(name: str) -> str:
    """Name of the Service (a DNS-1035 label: it becomes a DNS name clients resolve)."""
    return name if _DNS1035.match(name) else short_name(name)


def is_derived(name: str) -> bool:
    """True when some child or label does not carry ``name`` itself."""
    return service_name(name) != name or label_value(name) != name


def sdd_name(labels: dict[str, str], annotations: dict[str, str], label: str) -> str | None:
    """The SDD a child or pod belongs to: the annotation when present, else the label."""
    return annotations.get(ANNOTATION_NAME) or labels.get(label) or None
