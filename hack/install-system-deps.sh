#!/usr/bin/env bash
# System packages the tests and the demo need, from Debian's archive: Prometheus (the
# autotuner's metrics source in integration tests).
# Installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail

need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v go >/dev/null || { echo "[install-system-deps] Go >= 1.26 is required to build the control plane (Debian's golang-go is too old)" >&2; exit 1; }
[ ${#need[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "[install-system-deps] installing: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends keeps prometheus from pulling in node-exporter and friends.
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's package starts a system Prometheus on :9090; tests run their own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  $sudo systemctl stop prometheus || true
fi
prometheus --version 2>&1 | head -1 >&2
