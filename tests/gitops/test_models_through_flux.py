"""SpecDecodeDeployments from Git through Flux's kustomize-controller (prune, wait, short
intervals) with the real operator, pod runner, vLLM stand-in and Prometheus.

Each test has its own directory in the repository, its own Kustomization and namespace, so
one model's health never gates another test's Kustomization."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import pytest

from specdecode_runtime.demo import LoadThread
from specdecode_runtime.loadgen import LoadGenerator

from ..kube_helpers import condition, get_json, get_or_none, wait_for
from .argocd import argocd_health
from .conftest import SOURCE, World, kustomization
from .models import deployment_k, dump, k_of, namespace_doc, ready, sdd

pytestmark = pytest.mark.plane
FLUX_MANAGER = "kustomize-controller"
OPERATOR_MANAGERS = ("specdecode-operator", "specdecode-autotuner")


def ks_ready(ks: dict[str, Any]) -> dict[str, Any]:
    return condition(ks, "Ready")


def ks_failed_with(text: str) -> Any:
    def pred(ks: dict[str, Any]) -> bool:
        r = ks_ready(ks)
        return r.get("status") == "False" and text in r.get("message", "")
    return pred


def field_owners(obj: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(manager, subresource) -> top-level fields it owns (f:spec, f:status, f:metadata)."""
    out: dict[tuple[str, str], set[str]] = {}
    for m in obj["metadata"].get("managedFields") or []:
        key = (m["manager"], m.get("subresource", ""))
        out.setdefault(key, set()).update((m.get("fieldsV1") or {}).keys())
    return out


class Sampler:
    """Records, once a second, what a user watching would see: K, the SDD's Ready, and the
    Kustomization's Ready/Healthy. Observation only: no test step waits on it."""

    def __init__(self, world: World, ks_name: str, namespace: str, name: str) -> None:
        self.world, self.ks_name, self.ns, self.name = world, ks_name, namespace, name
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                obj = self.world.sdd(self.ns, self.name)
                ks = self.world.ks(self.ks_name)
            except Exception:
                continue
            self.rows.append({
                "t": time.time(), "k": k_of(obj),
                "sdd_ready": condition(obj or {}, "Ready").get("status"),
                "ks_ready": ks_ready(ks).get("status"),
                "ks_reason": ks_ready(ks).get("reason"),
                "healthy": condition(ks, "Healthy").get("status"),
                "healthy_msg": condition(ks, "Healthy").get("message", ""),
            })

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._t.join(timeout=5)
        return self.rows


def test_flux_and_the_autotuner_never_fight_over_an_sdd(world: World, flux_operator: Any) -> None:
    """Proves: while the autotuner changes K (a rolling restart of real stand-in processes
    under load), Flux re-applies the SDD on every 5 s interval and finds nothing to change
    ('unchanged' in every change set), the SDD's generation and spec stay as committed, and
    managedFields show kustomize-controller owning spec, the operator and the autotuner
    owning only the status subresource."""
    ns, name, ksn = "gitops-tuned", "tuned", "models-tuned"
    git = world.git
    git.write("models/tuned/sdd.yaml", dump(namespace_doc(ns), sdd(name, ns, tuned=True)))
    sha = git.commit("add model tuned (autotune Auto)")
    world.apply(kustomization(ksn, SOURCE, "./models/tuned", interval="5s", timeout="60s"))
    world.wait_applied(ksn, sha, timeout=180)
    world.note("commit an SDD with autotune Auto (prune, wait, interval 5s)", ksn, ns)
    first = world.sdd(ns, name)
    assert first and k_of(first) == 3
    gen0, spec0 = first["metadata"]["generation"], first["spec"]
    since = time.time()
    sampler = Sampler(world, ksn, ns, name)
    load = LoadThread(LoadGenerator(world.prometheus.targets_dir, {(ns, name): 24}))
    try:
        k1 = wait_for("the autotuner changed K", lambda: (
            k := k_of(world.sdd(ns, name))) not in (None, 3) and k, timeout=240)
        world.note(f"autotuner changed K 3 -> {k1} (rollout running)", ksn, ns)
        wait_for(f"the SDD Ready at K={k1}", lambda: ready(o := world.sdd(ns, name))
                 and k_of(o) == k1, timeout=180)
        after = time.time()
        wait_for("six Flux applies in all, three after the rollout", lambda: len(
            world.apply_log(ksn, after)) >= 3 and len(world.apply_log(ksn, since)) >= 6,
            timeout=180)
        world.note(f"K={k1} rolled out; Flux kept reconciling", ksn, ns)
    finally:
        load.stop()
        rows = sampler.stop()

    key = f"SpecDecodeDeployment/{ns}/{name}"
    applies = world.apply_log(ksn, since)
    assert len(applies) >= 6, f"only {len(applies)} Flux reconciles observed"
    assert all(a["output"].get(key) == "unchanged" for a in applies), \
        [a["output"].get(key) for a in applies]
    now = get_json(world.plane, "sdd", name, "-n", ns, "--show-managed-fields")
    assert now["metadata"]["generation"] == gen0
    assert now["spec"] == spec0
    owners = field_owners(now)
    assert {m for m, sub in owners if sub == ""} == {FLUX_MANAGER}, owners
    assert "f:spec" in owners[(FLUX_MANAGER, "")]
    for m in OPERATOR_MANAGERS:
        for (mgr, sub), fields in owners.items():
            if mgr == m:
                assert sub == "status" and fields <= {"f:status"}, (mgr, sub, fields)
    # The tuner's writes: under its own manager once the status split (issue 9.1) is in,
    # under the operator's before; either way only through the status subresource.
    assert any((m, "status") in owners for m in OPERATOR_MANAGERS), owners
    assert (now.get("status") or {}).get("autotune"), "the autotuner wrote no status"
    # What Flux showed meanwhile: its Kustomization never went False.
    assert rows and all(r["ks_ready"] != "False" for r in rows), \
        [r for r in rows if r["ks_ready"] == "False"][:3]
    unhealthy = sorted({r["healthy_msg"][:80] for r in rows if r["healthy"] != "True"})
    world.note(f"while K changed: {len(applies)} Flux applies, all 'unchanged'; "
               f"{sum(r['healthy'] != 'True' for r in rows)}/{len(rows)} samples with "
               f"Healthy!=True {unhealthy[:2]}", ksn, ns)
    world.retire(ksn, "models/tuned", ns)


def test_pausing_the_autotuner_through_git(world: World, flux_operator: Any) -> None:
    """Proves: committing the annotation specdecode.io/autotune-paused: "true" reaches the SDD
    through Flux (owned by kustomize-controller, no new generation) and stops the tuner's
    evaluations while the operator keeps reconciling; removing it from Git resumes them."""
    ns, name, ksn = "gitops-pause", "paused", "models-pause"
    git = world.git
    op = world.operator
    assert op is not None
    decisions = "specdecode_operator_autotune_decisions_total"

    def commit(annotations: dict[str, str] | None, message: str) -> None:
        doc = sdd(name, ns, tuned=True)
        if annotations:
            doc["metadata"]["annotations"] = annotations
        git.write("models/pause/sdd.yaml", dump(namespace_doc(ns), doc))
        world.wait_applied(ksn, git.commit(message), timeout=180)

    world.apply(kustomization(ksn, SOURCE, "./models/pause", interval="10s"))
    commit(None, "add model paused (autotune Auto)")
    d0 = op.metric(decisions)
    wait_for("the tuner evaluates the SDD", lambda: op.metric(decisions) >= d0 + 2, timeout=60)
    gen = (world.sdd(ns, name) or {})["metadata"]["generation"]

    commit({"specdecode.io/autotune-paused": "true"}, "pause tuning of model paused")
    obj = get_json(world.plane, "sdd", name, "-n", ns, "--show-managed-fields")
    assert obj["metadata"]["annotations"]["specdecode.io/autotune-paused"] == "true"
    assert obj["metadata"]["generation"] == gen
    flux_fields = next(m["fieldsV1"] for m in obj["metadata"]["managedFields"]
                       if m["manager"] == FLUX_MANAGER and not m.get("subresource"))
    assert "f:specdecode.io/autotune-paused" in flux_fields["f:metadata"]["f:annotations"]
    # A cycle that read the SDD just before the annotation may still finish: start counting
    # after the operator's next reconcile, then require two more reconciles without any.
    op.wait_reconciles(op.reconciles() + 1, timeout=60)
    paused_at = op.metric(decisions)
    op.wait_reconciles(op.reconciles() + 2, timeout=90)
    assert op.metric(decisions) == paused_at, "the tuner kept evaluating a paused SDD"
    world.note("commit annotation specdecode.io/autotune-paused: \"true\"", ksn, ns)

    commit(None, "resume tuning of model paused")
    wait_for("the tuner evaluates the SDD again", lambda: op.metric(decisions) > paused_at,
             timeout=60)
    world.note("remove the annotation from Git", ksn, ns)
    world.retire(ksn, "models/pause", ns)


def test_a_spec_commit_reaches_the_deployment_and_a_removal_prunes(
        world: World, flux_operator: Any) -> None:
    """Proves: a commit narrowing the draft-token bounds reaches the Deployment's vLLM
    arguments (initial K 3 clamped to the new minimum 5) through Flux and the operator; a
    commit removing an SDD makes Flux prune it and garbage collection remove its children."""
    ns, ksn = "gitops-spec", "models-spec"
    git, plane = world.git, world.plane
    git.write("models/spec/namespace.yaml", dump(namespace_doc(ns)))
    git.write("models/spec/a.yaml", dump(sdd("a", ns)))
    git.write("models/spec/b.yaml", dump(sdd("b", ns)))
    sha = git.commit("add models a and b")
    world.apply(kustomization(ksn, SOURCE, "./models/spec", interval="10s"))
    world.wait_applied(ksn, sha, timeout=180)
    world.note("commit SDDs a and b (autotune Off)", ksn, ns)
    assert deployment_k(get_json(plane, "deployment", "a", "-n", ns)) == 3

    git.write("models/spec/a.yaml", dump(sdd("a", ns, draftTokens={"min": 5, "max": 8})))
    sha = git.commit("a: draftTokens bounds [5, 8]")
    world.wait_applied(ksn, sha, timeout=180)
    dep = wait_for("Deployment a renders K=5", lambda: (
        d := get_json(plane, "deployment", "a", "-n", ns)) and deployment_k(d) == 5 and d,
        timeout=60)
    assert dep["metadata"]["generation"] >= 2
    world.note("commit draftTokens {min: 5, max: 8} for a", ksn, ns)

    children = ["deployment", "service", "poddisruptionbudget"]
    had = [kind for kind in children if get_or_none(plane, kind, "b", "-n", ns)]
    assert "deployment" in had and "service" in had
    git.remove("models/spec/b.yaml")
    sha = git.commit("remove model b")
    world.wait_applied(ksn, sha)
    wait_for("SDD b pruned", lambda: world.sdd(ns, "b") is None, timeout=60)
    for kind in had:
        wait_for(f"{kind} b garbage-collected", lambda k=kind: get_or_none(
            plane, k, "b", "-n", ns) is None, timeout=60)
    world.note("remove b.yaml", ksn, ns)
    pods = get_json(plane, "pods", "-n", ns, "-l", "specdecode.io/deployment=b")["items"]
    assert all(p["metadata"].get("deletionTimestamp") for p in pods)
    world.retire(ksn, "models/spec", ns)


def test_flux_health_follows_the_sdd_conditions(world: World, flux_operator: Any) -> None:
    """Proves what Flux's health check (plain kstatus, wait: true) reads from an SDD:
    one the operator has not looked at yet (operator stopped: status is the schema's default,
    observedGeneration 0) -> InProgress, the check times out instead of passing it;
    Ready=True -> Current (the Kustomization turns Ready only after the SDD did); a rollout
    -> InProgress (a health check shorter than the rollout times out naming the SDD
    'InProgress'); Degraded for a reason only a change fixes (16 GPUs: Unschedulable) ->
    Stalled=True -> Failed, and the check fails early instead of waiting out its timeout."""
    ns, ksn = "gitops-health", "models-health"
    git = world.git
    glua = world.flux.binaries.glua if world.flux.binaries else None
    assert glua
    op = world.operator   # the current process (the upgrade test may have restarted it)
    assert op
    op.stop()
    try:
        git.write("models/health/namespace.yaml", dump(namespace_doc(ns)))
        git.write("models/health/h.yaml", dump(sdd("h", ns)))
        since = time.time()
        sha = git.commit("add model h")
        world.apply(kustomization(ksn, SOURCE, "./models/health", interval="10s",
                                  timeout="20s"))
        msg = world.wait_ks_event(ksn, f"SpecDecodeDeployment/{ns}/h status: 'InProgress'",
                                  since)
        assert "timeout waiting for" in msg
        fresh = world.sdd(ns, "h") or {}
        assert fresh.get("status") == {"observedGeneration": 0}   # defaulted, never written
        assert argocd_health(glua, fresh)[0] == "Progressing"
        world.note("commit SDD h while the operator is stopped (wait: true, timeout 20s)",
                   ksn, ns, event=msg)
    finally:
        op.start()
    world.wait_applied(ksn, sha, timeout=180)
    assert ready(world.sdd(ns, "h"))   # Flux passed it only once the operator had
    world.note("operator started again", ksn, ns)
    assert argocd_health(glua, world.sdd(ns, "h") or {})[0] == "Healthy"

    # A rollout that outlasts the 20 s health check: the stand-in takes 45 s to be ready.
    git.write("models/health/h.yaml", dump(sdd("h", ns, startup_delay=45,
                                               draftTokens={"min": 4, "max": 8})))
    since = time.time()
    sha = git.commit("h: bounds [4, 8] (rollout; the new pod needs 45 s)")
    world.wait_source(sha)
    world.flux.reconcile_now("kustomization", ksn)
    msg = world.wait_ks_event(ksn, f"SpecDecodeDeployment/{ns}/h status: 'InProgress'", since)
    assert "timeout waiting for" in msg
    world.note("commit bounds [4, 8] with a 45 s start: rollout outlasts timeout 20s",
               ksn, ns, event=msg)
    rolling = world.sdd(ns, "h") or {}
    assert condition(rolling, "Progressing").get("status") == "True"  # still rolling out
    assert condition(rolling, "Stalled").get("status") == "False"
    assert argocd_health(glua, rolling)[0] == "Progressing"
    world.wait_applied(ksn, sha, timeout=180)   # the rollout finished: Current again
    assert ready(world.sdd(ns, "h"))
    world.note("rollout finished", ksn, ns)

    git.write("models/health/big.yaml", dump(sdd("big", ns, gpu={"count": 16})))
    since = time.time()
    sha = git.commit("add model big (16 GPUs per replica: no node has them)")
    world.wait_source(sha)
    world.flux.reconcile_now("kustomization", ksn)
    msg = world.wait_ks_event(ksn, f"SpecDecodeDeployment/{ns}/big status: 'Failed'", since)
    assert "failed early due to stalled resources" in msg
    big = world.sdd(ns, "big") or {}
    stalled = condition(big, "Stalled")
    assert (stalled.get("status"), stalled.get("reason")) == ("True", "Unschedulable")
    assert condition(big, "Degraded").get("reason") == "Unschedulable"
    world.note("commit SDD big with gpu.count 16 (Degraded, Stalled: Unschedulable)",
               ksn, ns, event=msg)
    status, message = argocd_health(glua, big)
    assert status == "Degraded" and message.startswith("Unschedulable: ")
    # A problem a retry may clear (Degraded, not Stalled) is progress to Argo CD as to kstatus.
    flaky = copy.deepcopy(big)
    for c in flaky["status"]["conditions"]:
        if c["type"] in ("Degraded", "Stalled"):
            c.update(reason="APIError", message="the API server answered 503",
                     status="True" if c["type"] == "Degraded" else "False")
    status, message = argocd_health(glua, flaky)
    assert status == "Progressing" and message.startswith("retrying: APIError: ")

    git.remove("models/health/big.yaml")
    sha = git.commit("remove model big")
    world.wait_applied(ksn, sha, timeout=120)
    world.note("remove big.yaml", ksn, ns)
    world.retire(ksn, "models/health", ns)


def test_an_invalid_commit_is_refused_with_the_cel_message_and_a_fix_recovers(
        world: World, flux_operator: Any) -> None:
    """Proves: a commit with draftTokens.min > max is refused by the apiserver's CEL rule;
    Flux's Kustomization goes Ready=False carrying the CRD's own message, applies nothing of
    that commit (the valid SDD next to it stays as it was), the operator keeps running and
    reconciling; the fixing commit is applied and its SDD turns Ready."""
    ns, ksn = "gitops-invalid", "models-invalid"
    git, plane = world.git, world.plane
    git.write("models/invalid/namespace.yaml", dump(namespace_doc(ns)))
    git.write("models/invalid/good.yaml", dump(sdd("good", ns)))
    sha = git.commit("add model good")
    world.apply(kustomization(ksn, SOURCE, "./models/invalid", interval="10s"))
    world.wait_applied(ksn, sha, timeout=180)
    good0 = world.sdd(ns, "good")
    assert good0

    crd = get_json(plane, "crd", "specdecodedeployments.specdecode.io")
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["draftTokens"]["x-kubernetes-validations"]
    cel_message = next(r["message"] for r in rules if r["rule"] == "self.min <= self.max")

    git.write("models/invalid/bad.yaml", dump(sdd("bad", ns, draftTokens={"min": 8, "max": 2})))
    git.write("models/invalid/good.yaml", dump(sdd("good", ns, draftTokens={"min": 2,
                                                                            "max": 9})))
    sha = git.commit("add model bad (draftTokens.min 8 > max 2), widen good")
    world.wait_source(sha)
    world.flux.reconcile_now("kustomization", ksn)
    ks = world.wait_ks(ksn, "Ready=False with the CEL message", ks_failed_with(cel_message),
                       timeout=120)
    world.note("commit SDD bad with draftTokens {min: 8, max: 2}", ksn, ns)
    assert f"SpecDecodeDeployment/{ns}/bad" in ks_ready(ks)["message"]
    assert not str(ks["status"].get("lastAppliedRevision", "")).endswith(sha)
    assert world.sdd(ns, "bad") is None
    good = world.sdd(ns, "good")
    assert good and good["metadata"]["generation"] == good0["metadata"]["generation"]
    assert good["spec"] == good0["spec"]   # nothing of the refused commit was applied
    op = world.operator   # the current process (the upgrade test may have restarted it)
    assert op and op.comp and op.comp.alive
    before = op.reconciles()

    git.write("models/invalid/bad.yaml", dump(sdd("bad", ns, draftTokens={"min": 2, "max": 8})))
    sha = git.commit("fix model bad: draftTokens [2, 8]")
    world.wait_applied(ksn, sha, timeout=180)
    # Flux's health check passed the new SDD only once the operator reported it Ready (until
    # its first write it reads observedGeneration 0: InProgress).
    assert ready(world.sdd(ns, "bad"))
    assert op.reconciles() > before
    world.note("fix commit: draftTokens {min: 2, max: 8}", ksn, ns)
    world.retire(ksn, "models/invalid", ns)
