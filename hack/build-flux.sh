#!/usr/bin/env bash
# Builds Flux's source-controller and kustomize-controller from their Go modules (no images,
# no release downloads) for the GitOps test tier (tests/gitops, docs/gitops.md), and copies
# their CRDs from the modules' own config/crd/bases trees next to the binaries.
#
# Each controller has its own wrapper module under hack/flux/<name> (the controllers' go.mod
# files carry replace directives, so `go install pkg@version` refuses them). Binaries land in
# a cache outside the repo keyed by the wrappers' go.mod/go.sum, a recipe number and the Go
# version, so a second run takes seconds. Prints the directory on stdout:
#   <dir>/source-controller  <dir>/kustomize-controller  <dir>/crds/*.yaml  <dir>/glua
#
#   hack/build-flux.sh                # build or reuse; prints the dir
#   SPECDECODE_CACHE=/path ...        # cache root (default ~/.cache/specdecode-operator)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local   # a newer Go requirement must fail loudly, not download a toolchain
# -mod=mod: the wrappers' go.sum may lack checksums for packages only the build reaches.
export GOFLAGS="-buildvcs=false -mod=mod${GOFLAGS:+ $GOFLAGS}"

CONTROLLERS=(source-controller kustomize-controller)
RECIPE=1
# gopher-lua's interpreter, the Lua Argo CD embeds: the GitOps tier runs the Argo CD health
# check of docs/gitops.md with it. Installed into the same directory, keyed by its version.
GLUA_VERSION=v1.1.1

command -v go >/dev/null || { echo "build-flux: go is not installed (need Go >= 1.26)" >&2; exit 1; }

key=$( { for c in "${CONTROLLERS[@]}"; do cat "$here/flux/$c/go.mod" "$here/flux/$c/go.sum"; done
         echo "$RECIPE"; go version; } | sha256sum | cut -c1-16)
root="${SPECDECODE_CACHE:-$HOME/.cache/specdecode-operator}"
out="$root/flux-$key"

complete() {
  for c in "${CONTROLLERS[@]}"; do [ -x "$out/$c" ] || return 1; done
  [ -f "$out/crds/.complete" ]
}
ensure_glua() {  # $1: target dir
  [ "$(cat "$1/glua.version" 2>/dev/null)" = "$GLUA_VERSION" ] && [ -x "$1/glua" ] && return 0
  GOBIN="$1" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" \
    "github.com/yuin/gopher-lua/cmd/glua@$GLUA_VERSION"
  echo "$GLUA_VERSION" > "$1/glua.version"
}

if complete; then ensure_glua "$out"; echo "$out"; exit 0; fi

log() { printf '[build-flux %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp/crds"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

for c in "${CONTROLLERS[@]}"; do
  mod="github.com/fluxcd/$c"
  log "building $c ($(cd "$here/flux/$c" && go list -m -f '{{.Version}}' "$mod"))"
  (cd "$here/flux/$c" && go build -trimpath -ldflags "-s -w" -o "$tmp/$c" "$mod")
  dir=$(cd "$here/flux/$c" && go list -m -f '{{.Dir}}' "$mod")
  cp "$dir"/config/crd/bases/*.yaml "$tmp/crds/"
done
chmod -R u+w "$tmp/crds"
touch "$tmp/crds/.complete"
log "building glua (gopher-lua $GLUA_VERSION)"
ensure_glua "$tmp"

rm -rf "$out"; mv "$tmp" "$out"
trap - EXIT
find "$root" -maxdepth 1 -name 'flux-*' ! -name "flux-$key" ! -name '*.tmp.*' -exec rm -rf {} +
log "done in $(( $(date +%s) - start ))s -> $out"
echo "$out"
