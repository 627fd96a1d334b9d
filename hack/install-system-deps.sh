#!/usr/bin/env bash
# System packages the tests and the demo need, from Debian's archive: Prometheus (the
# autotuner's metrics source in integration tests), and Go via hack/install-go.sh.
# Installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail

need=()
command -v prometheus >/dev/null || need+=(prometheus)
# Go >= 1.26 for the control-plane build: found, or fetched by hack/install-go.sh.
"$(dirname "${BASH_SOURCE[0]}")/install-go.sh" >/dev/null
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
