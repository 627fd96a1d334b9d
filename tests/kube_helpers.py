"""Small polling helpers over kubectl for integration tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import yaml

from specdecode_runtime.localplane import LocalPlane


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def get_json(plane: LocalPlane, *args: str) -> dict[str, Any]:
    return json.loads(plane.kubectl("get", *args, "-o", "json").stdout)


def get_or_none(plane: LocalPlane, *args: str) -> dict[str, Any] | None:
    r = plane.kubectl("get", *args, "-o", "json", check=False)
    if r.returncode != 0:
        if "NotFound" in r.stderr:
            return None
        raise AssertionError(r.stderr)
    return json.loads(r.stdout)


def apply(plane: LocalPlane, doc: dict[str, Any], *extra: str, check: bool = True):  # type: ignore[no-untyped-def]
    return plane.kubectl("apply", "-f", "-", *extra, input=yaml.safe_dump(doc), check=check)


def sdd_doc(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "specdecode.io/v1alpha1", "kind": "SpecDecodeDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def events(plane: LocalPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    return get_json(plane, "events", "-n", namespace, "--field-selector",
                    f"involvedObject.name={name},involvedObject.kind=SpecDecodeDeployment")["items"]


def last_decision(obj: dict[str, Any]) -> dict[str, Any]:
    return ((obj.get("status") or {}).get("autotune") or {}).get("lastDecision") or {}


def wait_next_decision(plane: LocalPlane, namespace: str, name: str, after: dict[str, Any],
                       timeout: float = 60.0) -> dict[str, Any]:
    """The SDD once the autotuner has written a decision later than ``after`` (a
    lastDecision): evidence that another evaluation really happened."""
    t0 = after.get("time", "")
    return wait_for(f"a tuning decision on {namespace}/{name} after {t0!r}", lambda: (
        s := get_json(plane, "sdd", name, "-n", namespace))
        and last_decision(s).get("time", "") > t0 and s, timeout=timeout)
