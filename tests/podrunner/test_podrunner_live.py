"""The pod runner against a real plane: labelled pods become local processes whose /health
drives the pod's Ready condition; file_sd targets, restarts, deletion and teardown."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from specdecode_operator import render
from specdecode_runtime.localplane import LocalPlane
from specdecode_runtime.podrunner import PodRunner, PodRunnerProcess, RunnerConfig
from specdecode_runtime.prometheus import PrometheusServer
from tests.kube_helpers import condition, get_json, get_or_none, wait_for

from .conftest import FAKE_VLLM, OTHER_NODE, RUNNER_NODE, SIM

pytestmark = pytest.mark.plane

SPEC_CONFIG = '{"method":"eagle3","model":"yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",' \
              '"num_speculative_tokens":4}'


# ---- helpers --------------------------------------------------------------------------------

def pod_doc(name: str, ns: str, *, labelled: bool = True, sdd: str = "llama", k: str = "4",
            command: list[str] | None = None, env: dict[str, str] | None = None,
            grace: int = 5, node: str = RUNNER_NODE) -> dict[str, Any]:
    labels = {render.LABEL_SDD: sdd, render.LABEL_K: k} if labelled else {"app": name}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "vllm", "image": "vllm/vllm-openai:v0.32.0",
                "command": command or ["vllm", "serve"],
                "args": ["meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", name,
                         "--host", "0.0.0.0", "--port", "8000",
                         "--speculative-config", SPEC_CONFIG],
                "env": [{"name": k_, "value": v} for k_, v in (env or {}).items()],
                "ports": [{"name": "http", "containerPort": 8000}],
            }],
        },
    }


def create(plane: LocalPlane, doc: dict[str, Any]) -> None:
    plane.kubectl("create", "-f", "-", input=yaml.safe_dump(doc))


def get_pod(plane: LocalPlane, ns: str, name: str) -> dict[str, Any] | None:
    return get_or_none(plane, "pod", name, "-n", ns)


def container_status(pod: dict[str, Any] | None) -> dict[str, Any]:
    return (((pod or {}).get("status") or {}).get("containerStatuses") or [{}])[0]


def pid_of(pod: dict[str, Any] | None) -> int | None:
    cid = container_status(pod).get("containerID", "")
    return int(cid.removeprefix("local://")) if cid.startswith("local://") else None


def is_ready(pod: dict[str, Any] | None) -> bool:
    return condition(pod or {}, "Ready").get("status") == "True"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(e.split("=", 1) for e in raw if "=" in e)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def http_status(port: int, path: str) -> int | None:
    """Only ever 127.0.0.1: pod IPs route nowhere."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


def running_pod(plane: LocalPlane, ns: str, name: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(f"{ns}/{name} to run locally",
                    lambda: (p := get_pod(plane, ns, name)) and pid_of(p) and p, timeout)


def ready_pod(plane: LocalPlane, ns: str, name: str, timeout: float = 40) -> dict[str, Any]:
    return wait_for(f"{ns}/{name} Ready",
                    lambda: (p := get_pod(plane, ns, name)) and is_ready(p) and p, timeout)


def target(runner: PodRunnerProcess, ns: str, name: str) -> list[dict[str, Any]] | None:
    assert runner.targets_dir is not None
    path = runner.targets_dir / f"{ns}_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---- tests ----------------------------------------------------------------------------------

def test_labelled_pod_runs_on_a_rewritten_local_port_and_ready_waits_for_health(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str) -> None:
    create(rplane, pod_doc("p", rns, env={"SPECDECODE_SIM_STARTUP_DELAY": "4"}))
    pod = running_pod(rplane, rns, "p")
    pid = pid_of(pod)
    assert pid and alive(pid)
    state = runner.pod_state(rns, "p")
    assert state and state["pid"] == pid
    port = state["port"]

    # Not ready while the stand-in "loads the model": kwok did not ready it either.
    assert pod["status"]["phase"] == "Running"
    assert not is_ready(pod)
    assert "podIP" not in pod["status"]
    assert http_status(port, "/health") != 200

    argv = cmdline(pid)
    # The console script runs through its shebang: python, script, args.
    assert argv[1:4] == [str(SIM), "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert flag(argv, "--port") == str(port) != "8000"
    assert flag(argv, "--host") == "127.0.0.1"
    assert argv.count("--port") == 1 and argv.count("--host") == 1
    assert flag(argv, "--speculative-config") == SPEC_CONFIG
    assert environ(pid)["SPECDECODE_SIM_STARTUP_DELAY"] == "4"

    pod = ready_pod(rplane, rns, "p")
    cs = container_status(pod)
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0
    assert condition(pod, "ContainersReady")["status"] == "True"
    assert pid_of(pod) == pid
    # It really listens on the new port.
    assert http_status(port, "/health") == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
        assert [m["id"] for m in json.load(r)["data"]] == ["p"]


def test_ready_condition_follows_health_both_ways(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str, tmp_path: Path) -> None:
    flag_file = tmp_path / "health"
    create(rplane, pod_doc("flip", rns, command=[*FAKE_VLLM, "serve"],
                           env={"FAKE_HEALTH_FILE": str(flag_file)}))
    pid = pid_of(ready_pod(rplane, rns, "flip"))

    flag_file.write_text("fail")
    pod = wait_for("Ready=False", lambda: (p := get_pod(rplane, rns, "flip"))
                   and condition(p, "Ready").get("status") == "False" and p, 10)
    assert condition(pod, "ContainersReady")["status"] == "False"
    assert condition(pod, "Ready")["reason"] == "ContainersNotReady"
    assert not container_status(pod)["ready"]
    assert pid_of(pod) == pid and alive(pid)  # not ready is not dead
    assert target(runner, rns, "flip") is not None  # still scraped

    flag_file.write_text("ok")
    pod = ready_pod(rplane, rns, "flip", timeout=10)
    assert pid_of(pod) == pid and container_status(pod)["restartCount"] == 0
    assert "reason" not in condition(pod, "Ready")


def test_target_has_the_labels_and_deletion_leaves_nothing_behind(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str) -> None:
    create(rplane, pod_doc("t", rns, sdd="llama-a", k="5"))
    pid = pid_of(ready_pod(rplane, rns, "t"))
    assert pid
    state = runner.pod_state(rns, "t")
    assert state
    assert target(runner, rns, "t") == [{
        "targets": [f"127.0.0.1:{state['port']}"],
        "labels": {"namespace": rns, "pod": "t", "sdd": "llama-a", "draft_tokens": "5"},
    }]

    rplane.kubectl("delete", "pod", "t", "-n", rns, "--wait=false")
    wait_for("pod gone from the API", lambda: get_pod(rplane, rns, "t") is None, 20)
    wait_for("process gone", lambda: not alive(pid), 15)
    wait_for("target removed", lambda: target(runner, rns, "t") is None, 5)
    wait_for("state removed", lambda: runner.pod_state(rns, "t") is None, 5)
    assert http_status(state["port"], "/health") is None


def test_exited_process_is_restarted_and_restart_count_increases(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str) -> None:
    create(rplane, pod_doc("crash", rns))
    first = pid_of(ready_pod(rplane, rns, "crash"))
    assert first
    port = (runner.pod_state(rns, "crash") or {})["port"]

    os.kill(first, signal.SIGKILL)
    pod = wait_for("restart", lambda: (p := get_pod(rplane, rns, "crash"))
                   and container_status(p).get("restartCount", 0) >= 1
                   and pid_of(p) not in (None, first) and p, 20)
    second = pid_of(pod)
    assert second and alive(second) and not alive(first)
    last = container_status(pod)["lastState"]["terminated"]
    assert last["exitCode"] == 137 and last["reason"] == "Error"
    pod = ready_pod(rplane, rns, "crash")
    assert pid_of(pod) == second
    # Same port again, so the scrape target did not move.
    assert (runner.pod_state(rns, "crash") or {})["port"] == port
    assert target(runner, rns, "crash") is not None

    os.kill(second, signal.SIGKILL)
    pod = wait_for("second restart", lambda: (p := get_pod(rplane, rns, "crash"))
                   and container_status(p).get("restartCount", 0) >= 2 and pid_of(p)
                   not in (None, first, second) and p, 20)
    assert pod["status"]["phase"] == "Running"


def test_process_ignoring_sigterm_is_killed_after_the_grace_period(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str) -> None:
    create(rplane, pod_doc("stubborn", rns, command=[*FAKE_VLLM, "serve"], grace=2,
                           env={"FAKE_IGNORE_SIGTERM": "1"}))
    pid = pid_of(ready_pod(rplane, rns, "stubborn"))
    assert pid
    t0 = time.monotonic()
    rplane.kubectl("delete", "pod", "stubborn", "-n", rns, "--wait=false")
    time.sleep(1.0)
    assert alive(pid), "SIGTERM is ignored, so only the SIGKILL after 2s can end it"
    wait_for("SIGKILL after grace", lambda: not alive(pid), 15)
    assert time.monotonic() - t0 >= 2.0
    assert get_pod(rplane, rns, "stubborn") is None


def test_pod_without_the_label_is_left_to_kwok(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str) -> None:
    create(rplane, pod_doc("plain", rns, labelled=False))
    pod = ready_pod(rplane, rns, "plain", timeout=20)
    # kwok's stock pod-ready stage: Ready at once, with a (fake) pod IP, no local process.
    assert pod["status"].get("podIP")
    assert pid_of(pod) is None
    # Evidence that the runner has synced since "plain" existed: a labelled pod created
    # after it is started and probed Ready by the runner (two syncs at least).
    create(rplane, pod_doc("witness", rns, command=[*FAKE_VLLM, "serve"]))
    assert pid_of(ready_pod(rplane, rns, "witness"))
    assert runner.pod_state(rns, "witness") is not None
    assert runner.pod_state(rns, "plain") is None
    assert target(runner, rns, "plain") is None
    assert f"{rns}/plain" not in runner.log_tail(10_000)


def test_rendered_deployment_pods_run_and_go_away_on_scale_down(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str) -> None:
    spec = render.defaulted_spec({
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama",
                  "hfTokenSecretRef": {"name": "hf"}},
        "drafter": {"method": "eagle3", "model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"},
        "replicas": 2,
        "nodeSelector": {"kubernetes.io/hostname": RUNNER_NODE},
    })
    sdd = {"metadata": {"name": "llama", "namespace": rns, "uid": "none"}}
    dep = render.deployment(sdd, spec, 3)
    del dep["metadata"]["ownerReferences"]  # no SDD object here: GC would delete it
    rplane.kubectl("create", "secret", "generic", "hf", "-n", rns, "--from-literal=token=hf_x")
    create(rplane, dep)

    def ready_replicas() -> bool:
        d = get_json(rplane, "deployment", "llama", "-n", rns)
        return (d.get("status") or {}).get("readyReplicas") == 2

    wait_for("2 ready replicas via the runner", ready_replicas, 60)
    pods = get_json(rplane, "pods", "-n", rns, "-l", f"{render.LABEL_SDD}=llama")["items"]
    assert len(pods) == 2
    pids = []
    for p in pods:
        name, pid = p["metadata"]["name"], pid_of(p)
        assert pid and alive(pid)
        pids.append(pid)
        assert environ(pid)["HF_TOKEN"] == "hf_x"
        argv = cmdline(pid)
        assert json.loads(flag(argv, "--speculative-config"))["num_speculative_tokens"] == 3
        t = target(runner, rns, name)
        assert t and t[0]["labels"] == {"namespace": rns, "pod": name, "sdd": "llama",
                                        "draft_tokens": "3"}

    rplane.kubectl("scale", "deployment", "llama", "-n", rns, "--replicas=0")
    wait_for("pods gone", lambda: not get_json(rplane, "pods", "-n", rns)["items"], 30)
    wait_for("processes gone", lambda: not any(alive(p) for p in pids), 15)
    for p in pods:
        wait_for("target removed", lambda p=p: target(runner, rns, p["metadata"]["name"])
                 is None, 5)


def test_prometheus_scrapes_the_runner_targets(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str, tmp_path: Path) -> None:
    assert runner.targets_dir is not None
    create(rplane, pod_doc("scraped", rns, sdd="sdd-prom", k="6"))
    ready_pod(rplane, rns, "scraped")
    prom = PrometheusServer(workdir=tmp_path / "prom")
    # Share the runner's file_sd directory.
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "targets").symlink_to(runner.targets_dir, target_is_directory=True)
    with prom:
        def up() -> list[dict[str, Any]]:
            return [r for r in prom.query('up{sdd="sdd-prom"}') if r["value"][1] == "1"]

        res = wait_for("target up", up, 30)
        labels = res[0]["metric"]
        assert labels["namespace"] == rns and labels["pod"] == "scraped"
        assert labels["draft_tokens"] == "6"
        assert labels["instance"].startswith("127.0.0.1:")
        assert wait_for("vllm metrics", lambda: prom.query(
            'vllm:num_requests_running{sdd="sdd-prom"}'), 15)


def test_in_process_runner_stops_its_processes_and_marks_pods_not_ready(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str, tmp_path: Path) -> None:
    cfg = RunnerConfig(kubeconfig=rplane.kubeconfig, node=OTHER_NODE,
                       state_dir=tmp_path / "state", targets_dir=tmp_path / "targets",
                       sync_interval=0.5)
    r = PodRunner(cfg)
    r.start()
    try:
        create(rplane, pod_doc("mine", rns, node=OTHER_NODE))
        pod = ready_pod(rplane, rns, "mine")
        pid = pid_of(pod)
        assert pid and alive(pid)
        snap = r.snapshot()[f"{rns}_mine"]
        assert snap["pid"] == pid and snap["ready"]
        assert (tmp_path / "targets" / f"{rns}_mine.json").exists()
        # The session runner (--node gpu-node-0) leaves it alone.
        assert runner.pod_state(rns, "mine") is None
    finally:
        r.stop()
    assert not alive(pid)
    assert not list((tmp_path / "targets").glob("*.json"))
    pod = get_pod(rplane, rns, "mine")
    assert pod and not is_ready(pod)
    assert container_status(pod)["state"] == {"waiting": {"reason": "RunnerStopped"}}


def test_a_new_runner_kills_the_orphans_of_a_killed_one_and_restarts_them(
        rplane: LocalPlane, runner: PodRunnerProcess, rns: str, tmp_path: Path) -> None:
    def other_runner() -> PodRunnerProcess:
        return PodRunnerProcess(kubeconfig=rplane.kubeconfig, state_dir=tmp_path / "state",
                                targets_dir=tmp_path / "targets", namespace=rns,
                                extra_args=[f"--node={OTHER_NODE}"])

    first = other_runner()
    with first:
        create(rplane, pod_doc("orphan", rns, node=OTHER_NODE))
        old = pid_of(ready_pod(rplane, rns, "orphan"))
        assert old
        assert first.comp and first.comp.proc
        first.comp.proc.kill()  # SIGKILL: no chance to stop its processes
        first.comp.proc.wait()
    assert alive(old), "the pod's process has its own session: it outlives the runner"

    with other_runner() as second:
        wait_for("orphan killed", lambda: not alive(old), 10)
        pod = wait_for("restarted by the new runner", lambda: (p := get_pod(rplane, rns, "orphan"))
                       and pid_of(p) not in (None, old) and is_ready(p) and p, 40)
        assert container_status(pod)["restartCount"] == 1
        state = second.pod_state(rns, "orphan")
        assert state and state["pid"] == pid_of(pod)
        new = pid_of(pod)
    assert new and not alive(new)
