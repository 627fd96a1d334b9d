"""Pure parts of the pod runner: container spec -> local argv/env, and process -> pod status."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st_

from specdecode_operator import names, render
from specdecode_runtime.podrunner import command as cmd
from specdecode_runtime.podrunner import status as st

SIM = ["/venv/bin/specdecode-sim"]


def _values(argv: list[str], flag: str) -> list[str]:
    out = []
    for i, a in enumerate(argv):
        if a == flag:
            out.append(argv[i + 1])
        elif a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
    return out


# ---- argv ---------------------------------------------------------------------------------

def test_rendered_vllm_container_becomes_the_stand_in_on_a_local_port() -> None:
    spec = render.defaulted_spec({
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama"},
        "drafter": {"method": "eagle3", "model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"},
    })
    sdd = {"metadata": {"name": "llama", "namespace": "ns", "uid": "u"}}
    container = render.deployment(sdd, spec, 4)["spec"]["template"]["spec"]["containers"][0]
    argv = cmd.local_argv(container, SIM, 41234)
    assert argv[:3] == [SIM[0], "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert _values(argv, "--port") == ["41234"]
    assert _values(argv, "--host") == ["127.0.0.1"]
    assert _values(argv, "--served-model-name") == ["llama"]
    cfg = json.loads(_values(argv, "--speculative-config")[0])
    assert cfg["num_speculative_tokens"] == 4
    # Nothing but host and port changed, in place.
    original = container["command"] + container["args"]
    assert len(argv) == len(original)
    diff = [(a, b) for a, b in zip(original, argv, strict=True) if a != b]
    assert diff == [("vllm", SIM[0]), ("0.0.0.0", "127.0.0.1"),
                    (str(spec["service"]["port"]), "41234")]


@pytest.mark.parametrize(("argv", "expected"), [
    (["vllm", "serve", "m", "--port=8000", "--host=0.0.0.0"],
     ["S", "serve", "m", "--port=9", "--host=127.0.0.1"]),
    (["vllm", "serve", "m"], ["S", "serve", "m", "--port", "9", "--host", "127.0.0.1"]),
    (["/usr/local/bin/vllm", "serve", "m", "--port", "8000"],
     ["S", "serve", "m", "--port", "9", "--host", "127.0.0.1"]),
    (["vllm", "serve", "m", "--port"], ["S", "serve", "m", "--port", "9", "--host", "127.0.0.1"]),
    (["python3", "app.py", "--port", "1"], ["python3", "app.py", "--port", "9", "--host",
                                            "127.0.0.1"]),
    (["vllm", "serve", "m", "--", "--port", "1"],
     ["S", "serve", "m", "--port", "9", "--host", "127.0.0.1", "--", "--port", "1"]),
    (["vllm", "serve", "m", "--port", "1", "--port", "2"],
     ["S", "serve", "m", "--port", "9", "--port", "9", "--host", "127.0.0.1"]),
])
def test_rewrite(argv: list[str], expected: list[str]) -> None:
    got = cmd.local_argv({"command": argv}, ["S"], 9)
    assert got == expected


def test_vllm_command_may_be_several_words_and_no_command_means_vllm_serve() -> None:
    got = cmd.local_argv({"args": ["m", "--port", "8000"]}, ["python", "-m", "vllm_x"], 5)
    assert got == ["python", "-m", "vllm_x", "serve", "m", "--port", "5", "--host", "127.0.0.1"]


def test_a_vllm_lookalike_is_not_replaced() -> None:
    assert cmd.resolve_executable(["vllm-serve", "x"], ["S"]) == ["vllm-serve", "x"]
    assert cmd.resolve_executable(["/opt/vllm/bin/python"], ["S"]) == ["/opt/vllm/bin/python"]


def test_bad_inputs_raise() -> None:
    with pytest.raises(cmd.CommandError):
        cmd.resolve_executable([], ["S"])
    with pytest.raises(cmd.CommandError):
        cmd.rewrite_listen(["x"], 0)
    with pytest.raises(cmd.CommandError):
        cmd.resolve_executable(["vllm"], [])


def test_args_expand_env_references_like_the_kubelet() -> None:
    c = {"command": ["vllm", "serve", "$(MODEL)", "--x", "$$(MODEL)", "$(NOPE)"]}
    got = cmd.local_argv(c, ["S"], 7, env={"MODEL": "m1"})
    assert got[:6] == ["S", "serve", "m1", "--x", "$(MODEL)", "$(NOPE)"]


_args = st_.lists(st_.sampled_from(
    ["--port", "--host", "--port=1", "--host=h", "x", "8000", "0.0.0.0", "--y", "--"]),
    max_size=10)


@given(_args, st_.integers(1, 65535))
def test_every_port_and_host_before_the_end_of_options_is_ours(args: list[str], port: int
                                                              ) -> None:
    got = cmd.rewrite_listen(["S", *args], port)
    opts = got[: got.index("--")] if "--" in got else got
    assert _values(opts, "--port") and set(_values(opts, "--port")) == {str(port)}
    assert set(_values(opts, "--host")) == {"127.0.0.1"}
    # What follows "--" is passed through untouched.
    if "--" in args:
        assert got[got.index("--"):] == args[args.index("--"):]


def test_container_port_and_health_path() -> None:
    c = {"ports": [{"containerPort": 8080}],
         "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}}}
    assert cmd.container_port(c, ["s", "--port", "9000"]) == 9000
    assert cmd.container_port(c, ["s", "--port=9001"]) == 9001
    assert cmd.container_port(c, ["s"]) == 8080
    assert cmd.container_port({}, ["s"]) is None
    assert cmd.health_path(c) == "/ready"
    assert cmd.health_path({}) == "/health"


# ---- env ----------------------------------------------------------------------------------

def test_env_literal_secret_configmap_fieldref_and_notes() -> None:
    pod = {"metadata": {"name": "p1", "namespace": "ns", "labels": {"a": "b"}},
           "spec": {"nodeName": "gpu-node-0"}}
    objects = {
        ("Secret", "ns", "hf"): {"token": base64.b64encode(b"hf_abc").decode()},
        ("ConfigMap", "ns", "cfg"): {"level": "debug"},
    }
    container = {"env": [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "$(A)-2"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "LBL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}},
        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k",
                                                        "optional": True}}},
        {"name": "NOKEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "zz"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ], "envFrom": [{"configMapRef": {"name": "cfg"}}]}
    res = cmd.container_env(container, pod, lambda k, ns, n: objects.get((k, ns, n)))
    assert res.env == {"A": "1", "B": "1-2", "HF_TOKEN": "hf_abc", "LEVEL": "debug",
                       "POD": "p1", "NODE": "gpu-node-0", "LBL": "b"}
    notes = "\n".join(res.notes)
    for name in ("IP", "GONE", "NOKEY", "CPU", "envFrom"):
        assert name in notes
    assert "OPT" not in notes  # optional and absent: silently empty, as in Kubernetes


# ---- status -------------------------------------------------------------------------------

NOW = "2025-01-01T00:00:10Z"


def _obs(**kw: object) -> st.Observed:
    base: dict[str, object] = dict(name="vllm", image="img", pid=42,
                                   started_at="2025-01-01T00:00:00Z", healthy=False,
                                   started=False, restart_count=0)
    base.update(kw)
    return st.Observed(**base)  # type: ignore[arg-type]


def _cond(status: dict[str, object], type_: str) -> dict[str, object]:
    return next(c for c in status["conditions"] if c["type"] == type_)  # type: ignore[attr-defined, index]


def test_ready_follows_health_only_while_running() -> None:
    s = st.desired_status(_obs(healthy=True, started=True), {}, NOW)
    assert s["phase"] == "Running"
    assert _cond(s, "Ready")["status"] == "True"
    assert _cond(s, "ContainersReady")["status"] == "True"
    cs = s["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and cs["containerID"] == "local://42"
    assert cs["state"] == {"running": {"startedAt": "2025-01-01T00:00:00Z"}}

    s = st.desired_status(_obs(healthy=False), {}, NOW)
    assert _cond(s, "Ready")["status"] == "False"
    assert _cond(s, "Ready")["reason"] == "ContainersNotReady"
    assert not s["containerStatuses"][0]["ready"]

    # A stale "healthy" without a process is not ready.
    s = st.desired_status(_obs(pid=None, healthy=True), {}, NOW)
    assert _cond(s, "Ready")["status"] == "False"
    assert s["phase"] == "Pending"


def test_transition_time_moves_only_on_flip() -> None:
    current = {"conditions": [{"type": "Ready", "status": "True",
                               "lastTransitionTime": "2025-01-01T00:00:05Z"}]}
    same = st.desired_status(_obs(healthy=True, started=True), current, NOW)
    assert _cond(same, "Ready")["lastTransitionTime"] == "2025-01-01T00:00:05Z"
    assert _cond(same, "Ready")["reason"] is None  # clears a stale reason
    flipped = st.desired_status(_obs(healthy=False), current, NOW)
    assert _cond(flipped, "Ready")["lastTransitionTime"] == NOW


def test_crash_loop_shows_the_exit_and_stays_running() -> None:
    term = st.Termination(exit_code=137, reason="Error", started_at="a", finished_at="b",
                          signal=9)
    s = st.desired_status(_obs(pid=None, restart_count=2, last_termination=term,
                               backoff_s=4), {}, NOW)
    assert s["phase"] == "Running"
    cs = s["containerStatuses"][0]
    assert cs["restartCount"] == 2
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["lastState"]["terminated"]["exitCode"] == 137
    assert cs["lastState"]["terminated"]["signal"] == 9
    assert "containerID" not in cs
    # Restarted: running again, the termination kept as lastState.
    s = st.desired_status(_obs(pid=43, restart_count=3, last_termination=term), {}, NOW)
    cs = s["containerStatuses"][0]
    assert "running" in cs["state"] and cs["lastState"]["terminated"]["exitCode"] == 137


def test_finished_pods_get_a_terminal_phase_and_waiting_overrides() -> None:
    ok = st.Termination(0, "Completed", "a", "b")
    bad = st.Termination(3, "Error", "a", "b")
    assert st.desired_status(_obs(pid=None, last_termination=ok, finished=True), {},
                             NOW)["phase"] == "Succeeded"
    s = st.desired_status(_obs(pid=None, last_termination=bad, finished=True), {}, NOW)
    assert s["phase"] == "Failed"
    assert s["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    s = st.desired_status(_obs(pid=None, waiting="RunnerStopped"), {}, NOW)
    assert s["containerStatuses"][0]["state"] == {"waiting": {"reason": "RunnerStopped"}}
    assert s["phase"] == "Pending"


def test_needs_patch_ignores_what_did_not_change() -> None:
    desired = st.desired_status(_obs(healthy=True, started=True), {}, NOW)
    # As the apiserver returns it: extra fields, other conditions, nulls dropped.
    stored = json.loads(json.dumps(desired))
    for c in stored["conditions"]:
        c.pop("reason"), c.pop("message")
        c["lastProbeTime"] = None
    stored["conditions"].append({"type": "PodScheduled", "status": "True"})
    stored["qosClass"] = "BestEffort"
    assert not st.needs_patch(stored, st.desired_status(
        _obs(healthy=True, started=True), stored, "2025-01-01T00:09:00Z"))
    assert st.needs_patch(stored, st.desired_status(_obs(healthy=False), stored, NOW))
    assert st.needs_patch(stored, st.desired_status(
        _obs(healthy=True, started=True, restart_count=1), stored, NOW))
    assert st.needs_patch({}, desired)


def test_exit_codes_backoff_and_restart_policy() -> None:
    assert st.exit_code(0) == (0, None)
    assert st.exit_code(3) == (3, None)
    assert st.exit_code(-9) == (137, 9)
    assert st.exit_code(-15) == (143, 15)
    assert [st.restart_delay(n, 1.0, 10.0) for n in range(6)] == [0, 1, 2, 4, 8, 10]
    assert st.should_restart("Always", 0) and st.should_restart("Always", 1)
    assert st.should_restart("OnFailure", 1) and not st.should_restart("OnFailure", 0)
    assert not st.should_restart("Never", 1)


def test_target_labels() -> None:
    pod = {"metadata": {"name": "p", "namespace": "n", "labels": {
        render.LABEL_SDD: "llama", render.LABEL_K: "5", "other": "x"}}}
    assert st.target_labels(pod, render.LABEL_SDD, render.LABEL_K) == {
        "namespace": "n", "pod": "p", "sdd": "llama", "draft_tokens": "5"}


def test_target_labels_carry_the_full_name_of_a_long_sdd() -> None:
    long = "m" * 100
    [dep] = [m for m in render.render(
        {"metadata": {"name": long, "namespace": "n", "uid": "u"},
         "spec": {"model": {"name": "x"}, "drafter": {"method": "mtp"}}}, 3)
        if m["kind"] == "Deployment"]
    pod = {"metadata": {"name": "p", "namespace": "n", **dep["spec"]["template"]["metadata"]}}
    assert st.ANNOTATION_SDD_NAME == names.ANNOTATION_NAME
    assert pod["metadata"]["labels"][render.LABEL_SDD] != long
    assert st.target_labels(pod, render.LABEL_SDD, render.LABEL_K)["sdd"] == long
