"""The watch-fed cache (pure): the operator's own writes are read until the watch delivers
something at least as new, and a deletion the watch delivers forgets them."""

from __future__ import annotations

from typing import Any

from specdecode_operator.cache import Cache


def obj(name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": "ns",
                                               "resourceVersion": rv}, **extra}


def cache(watched: dict[tuple[str, str], list[dict[str, Any]]]) -> Cache:
    return Cache(sdds={}, children={"Deployment": watched}, pods={})


def test_an_own_write_is_read_until_the_watch_delivers_it() -> None:
    watched: dict[tuple[str, str], list[dict[str, Any]]] = {("ns", "m"): [obj("m", "7")]}
    c = cache(watched)
    c.wrote("Deployment", obj("m", "9", spec={"replicas": 2}))
    assert c.child("Deployment", "ns", "m")["metadata"]["resourceVersion"] == "9"
    watched[("ns", "m")] = [obj("m", "8")]          # an older event still in flight
    assert c.child("Deployment", "ns", "m")["metadata"]["resourceVersion"] == "9"
    watched[("ns", "m")] = [obj("m", "9", spec={"replicas": 2}, status={"ready": 1})]
    assert c.child("Deployment", "ns", "m")["status"] == {"ready": 1}
    watched[("ns", "m")] = [obj("m", "12")]
    assert c.child("Deployment", "ns", "m")["metadata"]["resourceVersion"] == "12"


def test_a_created_child_is_read_before_its_added_event() -> None:
    c = cache({})
    assert c.child("Deployment", "ns", "m") is None
    c.wrote("Deployment", obj("m", "3"))
    assert c.child("Deployment", "ns", "m")["metadata"]["resourceVersion"] == "3"


def test_a_delivered_deletion_forgets_an_older_own_write_only() -> None:
    c = cache({})
    c.wrote("Deployment", obj("m", "3"))
    c.deleted("Deployment", "ns", "m", "2")   # the deletion of an earlier incarnation
    assert c.child("Deployment", "ns", "m") is not None
    c.deleted("Deployment", "ns", "m", "5")
    assert c.child("Deployment", "ns", "m") is None


def test_resource_versions_that_are_not_integers_trust_the_watch() -> None:
    watched = {("ns", "m"): [obj("m", "a7")]}
    c = cache(watched)
    c.wrote("Deployment", obj("m", "9"))
    assert c.child("Deployment", "ns", "m")["metadata"]["resourceVersion"] == "a7"


def test_reads_are_copies() -> None:
    watched = {("ns", "m"): [obj("m", "1", spec={"replicas": 1})]}
    c = cache(watched)
    c.child("Deployment", "ns", "m")["spec"]["replicas"] = 5   # type: ignore[index]
    assert watched[("ns", "m")][0]["spec"] == {"replicas": 1}
