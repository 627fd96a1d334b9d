"""The pod runner: a "process kubelet" for the local plane.

For every pod bound to a node and labelled ``specdecode.io/deployment`` it runs the first
container's command as a local process on 127.0.0.1 (``vllm`` -> the vLLM stand-in), writes a
Prometheus file_sd target for it, mirrors its ``/health`` into the pod's Ready condition,
restarts it with back-off when it exits, and stops it when the pod goes away.

One sync thread does all decisions every ``sync_interval`` (list pods -> compare with the
processes -> act -> probe -> patch status). It polls rather than watches: lightkube decodes with
msgspec, whose lazy type set-up crashed the process (SIGSEGV) when a watch thread and the sync
thread decoded Pods at the same time; so every API call also goes through one lock, and the
types are decoded once up front. Pure parts live in command.py and status.py.

    runner = PodRunner(RunnerConfig(kubeconfig=..., state_dir=...))
    runner.start()   # returns once the first sync is done
    ...
    runner.stop()    # stops every process it started
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2 as httpx  # lightkube 1.x is built on httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube import operators as ops
from lightkube.core import decoders
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret
from lightkube.types import PatchType

from ..localplane.process import free_port, port_is_free
from ..prometheus import remove_target, write_target
from . import command as cmd
from . import status as st

log = logging.getLogger("specdecode.podrunner")

LABEL_SDD = "specdecode.io/deployment"
LABEL_K = "specdecode.io/draft-tokens"
FIELD_MANAGER = "specdecode-podrunner"


def default_vllm_command() -> list[str]:
    """The vLLM stand-in installed next to this Python (``specdecode-sim``)."""
    return [str(Path(sys.executable).parent / "specdecode-sim")]


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class RunnerConfig:
    kubeconfig: Path | None = None  # None: $KUBECONFIG / ~/.kube/config / in-cluster
    namespace: str | None = None  # None: all namespaces
    node: str | None = None  # only pods bound to this node; None: any node
    state_dir: Path = Path(".podrunner")  # logs/, pods/ (pid files), runner.json
    targets_dir: Path | None = None  # Prometheus file_sd directory; None: no targets
    vllm_command: list[str] = field(default_factory=default_vllm_command)
    label: str = LABEL_SDD
    sync_interval: float = 1.0  # also the health probe period
    probe_timeout: float = 1.0
    max_grace: float = 30.0  # caps terminationGracePeriodSeconds (60 s in rendered pods)
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    backoff_reset: float = 60.0  # a process that ran this long resets the back-off


@dataclass
class Managed:
    """One pod and its local process."""

    uid: str
    namespace: str
    name: str
    pod: dict[str, Any]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    proc_started_at: str = ""
    proc_started_mono: float = 0.0
    healthy: bool = False
    started: bool = False
    restart_count: int = 0
    failures: int = 0
    last_termination: st.Termination | None = None
    next_start: float = 0.0
    ever_started: bool = False
    finished: bool = False
    stopping: bool = False
    stop_thread: threading.Thread | None = None
    target_labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}_{self.name}"

    @property
    def container(self) -> dict[str, Any]:
        return dict((self.pod.get("spec") or {}).get("containers", [{}])[0])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


def _warm_up_decoders() -> None:
    """Decode each type once, in the caller's thread, before any thread of ours does."""
    for res in (Pod, Secret, ConfigMap):
        decoders.decode_list(b'{"items":[],"metadata":{}}', res)
        decoders.decode_object(b'{"metadata":{}}', res)


def _to_dict(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _proc_start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a recorded pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill_group(pgid: int, grace: float, wait: Any = None) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds (``wait(timeout)``
    reaps the leader when we are its parent)."""
    for sig, timeout in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wait is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    wait(timeout=0.1)
                    break
            elif _proc_start_ticks(pgid) is None:
                break
            else:
                time.sleep(0.1)
        else:
            continue
        # The leader is gone: sweep anything left in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        return


class PodRunner:
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir).resolve()
        self._pods: dict[str, Managed] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._synced = threading.Event()
        self._threads: list[threading.Thread] = []
        self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._lock = threading.Lock()  # guards _pods for snapshot() from other threads
        self._api = threading.Lock()  # one lightkube call at a time (see module docstring)
        self.client = self._client()
        _warm_up_decoders()

    # ---- lifecycle -----------------------------------------------------------------------
    def _client(self) -> Client:
        cfg = (KubeConfig.from_file(self.config.kubeconfig) if self.config.kubeconfig
               else KubeConfig.from_env())
        return Client(config=cfg, field_manager=FIELD_MANAGER,
                      timeout=httpx.Timeout(10.0, read=30.0))

    def start(self, timeout: float = 30.0) -> None:
        for d in ("logs", "pods"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        self._reap_orphans()
        t = threading.Thread(target=self._sync_loop, name="podrunner-sync", daemon=True)
        t.start()
        self._threads.append(t)
        if not self._synced.wait(timeout):
            self.stop()
            raise RuntimeError(f"pod runner: no successful sync within {timeout}s")
        (self.state_dir / "runner.json").write_text(json.dumps({"pid": os.getpid()}))
        log.info("podrunner ready: vllm -> %s", " ".join(self.config.vllm_command))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        sync = self._threads[0] if self._threads else None
        if sync is not None:
            sync.join(timeout=30)
        with self._lock:
            managed = list(self._pods.values())
        for m in managed:
            if not m.stopping:
                self._begin_stop(m, delete_pod=False, mark_not_ready=True)
        for m in managed:
            if m.stop_thread is not None:
                m.stop_thread.join(timeout=self.config.max_grace + 10)
        self._probes.shutdown(wait=False)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "runner.json").unlink()

    def __enter__(self) -> PodRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Managed pods by ``namespace_name``: pid, port, ready, restarts (for tests, demos)."""
        with self._lock:
            return {m.key: {"uid": m.uid, "pid": m.pid, "port": m.port, "ready": m.healthy,
                            "restarts": m.restart_count} for m in self._pods.values()}

    # ---- threads -------------------------------------------------------------------------
    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
                self._synced.set()
            except Exception:
                log.exception("sync failed (retrying)")
            self._wake.wait(self.config.sync_interval)
            self._wake.clear()

    # ---- one sync pass -------------------------------------------------------------------
    def _list_pods(self) -> list[dict[str, Any]]:
        labels = {self.config.label: ops.exists()}
        fields = {"spec.nodeName": self.config.node} if self.config.node else None
        with self._api:
            return [_to_dict(p) for p in self.client.list(
                Pod, namespace=self.config.namespace or "*", labels=labels, fields=fields)]

    def sync_once(self) -> None:
        pods = self._list_pods()
        seen: set[str] = set()
        for pod in pods:
            meta = pod.get("metadata") or {}
            if not (pod.get("spec") or {}).get("nodeName"):
                continue  # not scheduled yet: a kubelet only runs pods bound to it
            uid = meta["uid"]
            seen.add(uid)
            m = self._pods.get(uid)
            if meta.get("deletionTimestamp"):
                if m is None:
                    self._delete_pod_object(meta["namespace"], meta["name"], uid)
                elif not m.stopping:
                    m.pod = pod
                    self._begin_stop(m, delete_pod=True)
                continue
            if m is None:
                m = Managed(uid=uid, namespace=meta["namespace"], name=meta["name"], pod=pod)
                # A pod whose container ran under an earlier runner: our start is a restart.
                prev = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
                m.restart_count = int(prev.get("restartCount") or 0)
                waiting = ((prev.get("state") or {}).get("waiting") or {}).get("reason")
                m.ever_started = bool(prev) and waiting != "ContainerCreating"
                with self._lock:
                    self._pods[uid] = m
                log.info("pod %s/%s: adopted", m.namespace, m.name)
            else:
                m.pod = pod
        for uid, m in list(self._pods.items()):
            if uid not in seen and not m.stopping:
                log.info("pod %s/%s: gone from the API", m.namespace, m.name)
                self._begin_stop(m, delete_pod=False)

        active = [m for m in self._pods.values() if not m.stopping]
        for m in active:
            self._tick_process(m)
        self._probe_all([m for m in active if m.pid is not None])
        for m in active:
            self._sync_target(m)
            self._sync_status(m)
        # Forget pods whose stop has finished.
        with self._lock:
            for uid, m in list(self._pods.items()):
                if m.stopping and m.stop_thread is not None and not m.stop_thread.is_alive():
                    del self._pods[uid]

    # ---- processes -----------------------------------------------------------------------
    def _tick_process(self, m: Managed) -> None:
        policy = (m.pod.get("spec") or {}).get("restartPolicy", "Always")
        if m.proc is not None and m.proc.poll() is not None:
            code, sig = st.exit_code(m.proc.returncode)
            ran = time.monotonic() - m.proc_started_mono
            kill_group(m.proc.pid, 0.0)  # children outliving the leader
            m.proc = None
            m.healthy = m.started = False
            self._record_exit(m, st.Termination(
                exit_code=code, reason=st.termination_reason(code),
                started_at=m.proc_started_at, finished_at=now_rfc3339(), signal=sig),
                ran=ran, policy=policy)
        if m.proc is None and not m.finished and time.monotonic() >= m.next_start:
            self._start_process(m)

    def _record_exit(self, m: Managed, term: st.Termination, ran: float, policy: str) -> None:
        m.last_termination = term
        m.failures = 1 if ran >= self.config.backoff_reset else m.failures + 1
        self._remove_target(m)
        self._write_pidfile(m)
        if st.should_restart(policy, term.exit_code):
            delay = st.restart_delay(m.failures, self.config.backoff_base,
                                     self.config.backoff_max)
            m.next_start = time.monotonic() + delay
            log.warning("pod %s/%s: process exited with %d (%s); restart in %.1fs",
                        m.namespace, m.name, term.exit_code, term.reason, delay)
        else:
            m.finished = True
            log.info("pod %s/%s: process exited with %d; restartPolicy %s: not restarting",
                     m.namespace, m.name, term.exit_code, policy)

    def _env(self, m: Managed) -> dict[str, str]:
        res = cmd.container_env(m.container, m.pod, self._lookup)
        for note in res.notes:
            log.info("pod %s/%s: %s", m.namespace, m.name, note)
        return res.env

    def _lookup(self, kind: str, namespace: str, name: str) -> Mapping[str, str] | None:
        res = Secret if kind == "Secret" else ConfigMap
        try:
            with self._api:
                obj = _to_dict(self.client.get(res, name, namespace=namespace))
            return obj.get("data") or {}
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise

    def _start_process(self, m: Managed) -> None:
        # Keep the port across restarts so the scrape target stays put.
        if not m.port or not port_is_free(m.port):
            m.port = free_port()
        pod_env = self._env(m)
        argv = cmd.local_argv(m.container, self.config.vllm_command, m.port, pod_env)
        log_path = self.state_dir / "logs" / f"{m.key}.log"
        restarting = m.ever_started
        with log_path.open("ab") as logf:
            logf.write(f"=== {now_rfc3339()} start (restart {m.restart_count + restarting}): "
                       f"{' '.join(argv)}\n".encode())
            logf.flush()
            try:
                m.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    env={**os.environ, **pod_env}, cwd=self.state_dir,
                    start_new_session=True,  # own group: stopping kills its children too
                )
            except OSError as e:
                logf.write(f"=== start failed: {e}\n".encode())
                now = now_rfc3339()
                if restarting:
                    m.restart_count += 1
                m.ever_started = True
                self._record_exit(m, st.Termination(
                    exit_code=128, reason="StartError", started_at=now, finished_at=now,
                    message=str(e)), ran=0.0, policy="Always")
                return
        if restarting:
            m.restart_count += 1
        m.ever_started = True
        m.proc_started_at = now_rfc3339()
        m.proc_started_mono = time.monotonic()
        m.healthy = m.started = False
        self._write_pidfile(m)
        log.info("pod %s/%s: started pid %d on 127.0.0.1:%d", m.namespace, m.name,
                 m.proc.pid, m.port)

    def _write_pidfile(self, m: Managed) -> None:
        pid = m.pid
        data = {"uid": m.uid, "namespace": m.namespace, "name": m.name, "pid": pid,
                "port": m.port, "start_ticks": _proc_start_ticks(pid) if pid else None,
                "log": str(self.state_dir / "logs" / f"{m.key}.log"),
                "restarts": m.restart_count}
        path = self.state_dir / "pods" / f"{m.key}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def _reap_orphans(self) -> None:
        """Processes a previous runner left behind (it was SIGKILLed): kill them."""
        for f in (self.state_dir / "pods").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(f.read_text())
                pid = data.get("pid")
                if pid and _proc_start_ticks(pid) == data.get("start_ticks"):
                    log.warning("killing orphan pid %d of %s", pid, f.stem)
                    kill_group(pid, 0.0)
                if self.config.targets_dir:
                    remove_target(self.config.targets_dir, f.stem)
            f.unlink(missing_ok=True)

    def _begin_stop(self, m: Managed, delete_pod: bool, mark_not_ready: bool = False) -> None:
        m.stopping = True
        self._remove_target(m)  # stop scraping before the process goes
        spec = m.pod.get("spec") or {}
        meta = m.pod.get("metadata") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        grace = min(float(grace), self.config.max_grace)

        def run() -> None:
            proc = m.proc
            if proc is not None:
                log.info("pod %s/%s: stopping pid %d (grace %.0fs)", m.namespace, m.name,
                         proc.pid, grace)
                kill_group(proc.pid, grace, wait=proc.wait)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            (self.state_dir / "pods" / f"{m.key}.json").unlink(missing_ok=True)
            if delete_pod:
                self._delete_pod_object(m.namespace, m.name, m.uid)
            if mark_not_ready:
                self._mark_not_ready(m)

        m.stop_thread = threading.Thread(target=run, name=f"stop-{m.key}", daemon=True)
        m.stop_thread.start()

    def _delete_pod_object(self, namespace: str, name: str, uid: str) -> None:
        """A kubelet's last word on a terminating pod: delete it with grace 0 (kwok's
        pod-delete stage usually got there first)."""
        try:
            with self._api:
                pod = _to_dict(self.client.get(Pod, name, namespace=namespace))
                if (pod.get("metadata") or {}).get("uid") != uid:
                    return  # a new pod with the same name: not ours to delete
                self.client.delete(Pod, name, namespace=namespace, grace_period=0)
        except ApiError as e:
            if e.status.code != 404:
                log.warning("pod %s/%s: final delete failed: %s", namespace, name, e)
        except httpx.HTTPError as e:
            log.warning("pod %s/%s: final delete failed: %s", namespace, name, e)

    def _mark_not_ready(self, m: Managed) -> None:
        """When the runner stops, its pods must not keep claiming Ready (the phase stays
        Running, as with a kubelet that went away)."""
        obs = replace(self._observed(m), pid=None, healthy=False, started=False,
                      waiting="RunnerStopped")
        with contextlib.suppress(ApiError, httpx.HTTPError):
            self._patch_status(m, st.desired_status(obs, m.pod.get("status") or {},
                                                    now_rfc3339()))

    # ---- health, targets, status -----------------------------------------------------------
    def _probe(self, port: int, path: str) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.config.probe_timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _probe_all(self, managed: list[Managed]) -> None:
        futures = [(m, self._probes.submit(self._probe, m.port, cmd.health_path(m.container)))
                   for m in managed]
        for m, fut in futures:
            ok = fut.result()
            if ok != m.healthy:
                log.info("pod %s/%s: health %s", m.namespace, m.name, "ok" if ok else "failing")
            m.healthy = ok
            m.started = m.started or ok

    def _sync_target(self, m: Managed) -> None:
        if self.config.targets_dir is None:
            return
        if m.pid is None:
            self._remove_target(m)
            return
        labels = st.target_labels(m.pod, self.config.label, LABEL_K)
        if labels != m.target_labels:
            write_target(self.config.targets_dir, m.key, f"127.0.0.1:{m.port}", labels)
            m.target_labels = labels

    def _remove_target(self, m: Managed) -> None:
        if self.config.targets_dir is not None:
            remove_target(self.config.targets_dir, m.key)
        m.target_labels = {}

    def _observed(self, m: Managed) -> st.Observed:
        c = m.container
        backoff = max(0.0, m.next_start - time.monotonic())
        return st.Observed(
            name=c.get("name", "main"), image=c.get("image", ""), pid=m.pid,
            started_at=m.proc_started_at or None, healthy=m.healthy, started=m.started,
            restart_count=m.restart_count, last_termination=m.last_termination,
            finished=m.finished, backoff_s=round(backoff),
        )

    def _sync_status(self, m: Managed) -> None:
        current = m.pod.get("status") or {}
        desired = st.desired_status(self._observed(m), current, now_rfc3339())
        if st.needs_patch(current, desired):
            try:
                m.pod = _to_dict(self._patch_status(m, desired))
            except ApiError as e:
                if e.status.code != 404:
                    raise

    def _patch_status(self, m: Managed, desired: dict[str, Any]) -> Any:
        with self._api:
            return self.client.patch(Pod.Status, m.name, {"status": desired},
                                     namespace=m.namespace, patch_type=PatchType.STRATEGIC)
