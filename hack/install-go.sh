#!/usr/bin/env bash
# Finds or installs the Go toolchain the control-plane build needs and prints its bin directory.
#
#   1. `go` on PATH that is new enough: used as it is.
#   2. Otherwise the pinned release from the Go module proxy, fetched by any Go at all
#      (`go mod download golang.org/toolchain@v0.0.1-go<version>.<os>-<arch>`; the module's
#      directory is a complete Go installation), into a cache outside the repo.
#   3. No Go at all: Debian's golang-1.19-go (apt) just to do step 2.
#
#   hack/install-go.sh                  # prints e.g. ~/.cache/specdecode-operator/go/.../bin
#   SPECDECODE_CACHE=/path ...          # cache root (default ~/.cache/specdecode-operator)
#
# The build itself runs with GOTOOLCHAIN=local (hack/build-binaries.sh): the toolchain is
# chosen here, once, never switched behind the build's back.
set -euo pipefail

GO_VERSION=1.26.8      # the release builds are pinned to
GO_MIN=1.26            # hack/kube/go.mod's go directive needs at least this
root="${SPECDECODE_CACHE:-$HOME/.cache/specdecode-operator}"
log() { printf '[install-go %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

new_enough() {  # $1: a go binary
  local v
  v=$(GOTOOLCHAIN=local "$1" env GOVERSION 2>/dev/null) || return 1   # e.g. go1.26.8
  v=${v#go}
  [ "$(printf '%s\n%s\n' "$GO_MIN" "$v" | sort -V | head -1)" = "$GO_MIN" ]
}

if command -v go >/dev/null && new_enough "$(command -v go)"; then
  dirname "$(command -v go)"
  exit 0
fi

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "install-go: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac
os=$(uname -s | tr '[:upper:]' '[:lower:]')
module="golang.org/toolchain@v0.0.1-go$GO_VERSION.$os-$arch"
modcache="$root/go-toolchains"
stamp="$modcache/.go$GO_VERSION-$os-$arch"
if [ -f "$stamp" ] && [ -x "$(cat "$stamp")/go" ] && new_enough "$(cat "$stamp")/go"; then
  cat "$stamp"
  exit 0
fi

# Any Go can download a module; prefer what is there, else Debian's.
bootstrap=$(command -v go || true)
if [ -z "$bootstrap" ]; then
  for g in /usr/lib/go-1.*/bin/go; do [ -x "$g" ] && bootstrap=$g; done
fi
if [ -z "$bootstrap" ]; then
  command -v apt-get >/dev/null || {
    echo "install-go: no Go and no apt-get: install any Go (>= 1.19), then run this again" >&2
    exit 1; }
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "no Go found: installing Debian's golang-1.19-go to fetch Go $GO_VERSION with"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends golang-1.19-go ca-certificates >/dev/null
  bootstrap=/usr/lib/go-1.19/bin/go
fi

log "fetching Go $GO_VERSION ($module) with $("$bootstrap" version)"
mkdir -p "$modcache"
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
# Outside any module; the module cache of our own so nothing of the user's is touched.
dir=$(cd "$scratch" && GOTOOLCHAIN=local GOFLAGS=-modcacherw GOMODCACHE="$modcache" \
      GOPATH="$scratch/gopath" "$bootstrap" mod download -json "$module" \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))')
# Module zips carry no file modes: the toolchain's programs must be made executable again.
chmod +x "$dir/bin/"* "$dir/pkg/tool/"*/* 2>/dev/null || true
new_enough "$dir/bin/go" || { echo "install-go: $dir/bin/go does not run" >&2; exit 1; }
echo "$dir/bin" > "$stamp"
log "Go $GO_VERSION in $dir"
echo "$dir/bin"
