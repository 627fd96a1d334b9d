"""Pure: a pod's container spec -> the argv and environment of a local process.

No I/O. The runner decides the port and the executable; these functions only rewrite.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOCAL_HOST = "127.0.0.1"
VLLM = "vllm"
# vLLM images (vllm/vllm-openai) have ENTRYPOINT ["vllm", "serve"]: a container without a
# command runs that with its args.
DEFAULT_ENTRYPOINT = (VLLM, "serve")


class CommandError(ValueError):
    """The container cannot be turned into a local command line."""


def container_argv(container: Mapping[str, Any]) -> list[str]:
    """command + args as the container runtime would assemble them."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        command = list(DEFAULT_ENTRYPOINT)
    return command + args


def resolve_executable(argv: Sequence[str], vllm_command: Sequence[str]) -> list[str]:
    """Replace a leading ``vllm`` (bare or as a path, e.g. /usr/local/bin/vllm) by
    ``vllm_command`` (one or more words). Other commands run as they are."""
    if not argv:
        raise CommandError("empty command line")
    if not vllm_command:
        raise CommandError("empty vllm command")
    head = argv[0].rsplit("/", 1)[-1]
    if head == VLLM:
        return [*vllm_command, *argv[1:]]
    return list(argv)


def _rewrite_options(argv: list[str], values: Mapping[str, str]) -> list[str]:
    """Set every ``--name X`` / ``--name=X`` to ``values[name]``; append the absent ones."""
    out: list[str] = []
    found: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # end of options: nothing after it is ours to touch
            break
        name = arg.split("=", 1)[0]
        if name in values:
            found.add(name)
            if "=" in arg:
                out.append(f"{name}={values[name]}")
            else:
                out += [name, values[name]]
                # Like argparse, a following option is not this flag's value.
                nxt = argv[i + 1] if i + 1 < len(argv) else "-"
                i += 1 if nxt.startswith("-") else 2
                continue
        else:
            out.append(arg)
        i += 1
    for name, value in values.items():
        if name not in found:
            out += [name, value]
    return out + argv[i:]  # "--" and what follows, if any


def rewrite_listen(argv: Sequence[str], port: int, host: str = LOCAL_HOST) -> list[str]:
    """Make the process listen on ``host:port``: pods all use the container port (8000),
    local processes share one network namespace, so each gets its own free port."""
    if not 0 < port < 65536:
        raise CommandError(f"port {port} out of range")
    return _rewrite_options(list(argv), {"--port": str(port), "--host": host})


def local_argv(
    container: Mapping[str, Any], vllm_command: Sequence[str], port: int,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The full local command line for ``container`` ($(VAR) expanded from ``env``)."""
    argv = [_expand(a, env or {}) for a in container_argv(container)]
    return rewrite_listen(resolve_executable(argv, vllm_command), port)


def container_port(container: Mapping[str, Any], argv: Sequence[str]) -> int | None:
    """The port the pod spec means (``--port`` in argv, else the first containerPort)."""
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv) and argv[i + 1].isdigit():
            return int(argv[i + 1])
        if arg.startswith("--port=") and arg[7:].isdigit():
            return int(arg[7:])
    for p in container.get("ports") or []:
        if "containerPort" in p:
            return int(p["containerPort"])
    return None


def health_path(container: Mapping[str, Any]) -> str:
    """The readiness probe's HTTP path, as a kubelet would use it; vLLM's /health otherwise."""
    for probe in ("readinessProbe", "startupProbe"):
        http = (container.get(probe) or {}).get("httpGet") or {}
        if http.get("path"):
            return str(http["path"])
    return "/health"


# ---- environment ---------------------------------------------------------------------------

# (kind, namespace, name) -> the object's data dict, or None when it does not exist.
Lookup = Callable[[str, str, str], Mapping[str, str] | None]


@dataclass
class EnvResult:
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


_FIELD_PATHS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "metadata.uid": ("metadata", "uid"),
    "spec.nodeName": ("spec", "nodeName"),
    "spec.serviceAccountName": ("spec", "serviceAccountName"),
}


def _field_ref(pod: Mapping[str, Any], path: str) -> str | None:
    if path in _FIELD_PATHS:
        section, key = _FIELD_PATHS[path]
        value = (pod.get(section) or {}).get(key)
        return None if value is None else str(value)
    for section in ("labels", "annotations"):
        prefix = f"metadata.{section}['"
        if path.startswith(prefix) and path.endswith("']"):
            value = ((pod.get("metadata") or {}).get(section) or {}).get(path[len(prefix):-2])
            return None if value is None else str(value)
    return None


def _key_ref(ref: Mapping[str, Any], kind: str, namespace: str, lookup: Lookup
             ) -> tuple[str | None, str]:
    name, key = ref.get("name", ""), ref.get("key", "")
    data = lookup(kind, namespace, name)
    if data is None:
        return None, f"{kind} {namespace}/{name} not found"
    if key not in data:
        return None, f"{kind} {namespace}/{name} has no key {key!r}"
    value = data[key]
    if kind == "Secret":
        try:
            return base64.b64decode(value).decode(), ""
        except (binascii.Error, UnicodeDecodeError):
            return None, f"Secret {namespace}/{name} key {key!r} is not base64 UTF-8"
    return value, ""


def container_env(
    container: Mapping[str, Any], pod: Mapping[str, Any], lookup: Lookup
) -> EnvResult:
    """The container's env: literal values, simple secretKeyRef/configMapKeyRef/fieldRef
    resolved through ``lookup``; anything else is skipped with a note (never fatal)."""
    result = EnvResult()
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    for item in container.get("env") or []:
        name = item.get("name")
        if not name:
            continue
        if "valueFrom" not in item:
            # $(VAR) expansion, as the kubelet does it, for variables defined so far.
            result.env[name] = _expand(str(item.get("value", "")), result.env)
            continue
        src = item["valueFrom"] or {}
        value: str | None = None
        why = ""
        if "secretKeyRef" in src:
            value, why = _key_ref(src["secretKeyRef"], "Secret", namespace, lookup)
            optional = bool(src["secretKeyRef"].get("optional"))
        elif "configMapKeyRef" in src:
            value, why = _key_ref(src["configMapKeyRef"], "ConfigMap", namespace, lookup)
            optional = bool(src["configMapKeyRef"].get("optional"))
        elif "fieldRef" in src:
            path = (src["fieldRef"] or {}).get("fieldPath", "")
            value = _field_ref(pod, path)
            why, optional = f"fieldRef {path!r} is not supported locally", False
        else:
            why, optional = f"{'/'.join(src)} is not supported locally", False
        if value is None:
            if not optional:
                result.notes.append(f"env {name} skipped: {why}")
            continue
        result.env[name] = value
    if container.get("envFrom"):
        result.notes.append("envFrom is not supported locally: skipped")
    return result


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) references: known ones replaced, $$ escapes, unknown kept."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i + 2:]:
            end = value.index(")", i + 2)
            name = value[i + 2:end]
            out.append(env.get(name, value[i:end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)
