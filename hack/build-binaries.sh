#!/usr/bin/env bash
# Builds the real control-plane binaries from Go sources (no Docker, no release downloads):
# kube-apiserver, kube-controller-manager, kube-scheduler and etcd from the wrapper module in
# hack/kube, plus kwok (with its stock Stage files) and helm via `go install`.
#
# Binaries land in a cache outside the repo, keyed by the wrapper's go.mod/go.sum, the pinned
# versions and a recipe number, so a second run takes seconds. Prints the bin directory on stdout.
#
#   hack/build-binaries.sh            # build or reuse; prints the bin dir
#   SPECDECODE_CACHE=/path ...        # cache root (default ~/.cache/specdecode-operator)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local   # a newer Go requirement must fail loudly, not download a toolchain
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

KUBE_VERSION=v1.37.2
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0

# Go missing or too old: hack/install-go.sh fetches the pinned toolchain (see there).
gobin=$("$here/install-go.sh")
export PATH="$gobin:$PATH"

# Bump when the way binaries are built changes (flags, stamping); stage files are keyed apart.
RECIPE=1
# kwok's stock "fast" stages: nodes turn Ready, scheduled pods turn Running+Ready at once.
KWOK_STAGES="node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete"

key=$( { cat "$here/kube/go.mod" "$here/kube/go.sum"; echo "$RECIPE $KUBE_VERSION $KWOK_VERSION $HELM_VERSION"; go version; } \
       | sha256sum | cut -c1-16)
root="${SPECDECODE_CACHE:-$HOME/.cache/specdecode-operator}"
bin="$root/bin-$key"
want=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm)

complete() {
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

copy_stages() {  # $1: target bin dir
  [ "$(cat "$1/kwok-stages/.list" 2>/dev/null)" = "$KWOK_STAGES" ] && return 0
  local kwokdir
  kwokdir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$1/kwok-stages"; mkdir -p "$1/kwok-stages"
  for s in $KWOK_STAGES; do
    f="$kwokdir/kustomize/stage/$s.yaml"
    [ -f "$f" ] || { echo "build-binaries: kwok stage $s.yaml not found under $kwokdir" >&2; exit 1; }
    cp "$f" "$1/kwok-stages/"
  done
  chmod -R u+w "$1/kwok-stages"
  echo "$KWOK_STAGES" > "$1/kwok-stages/.list"
}

if complete; then
  copy_stages "$bin"
  echo "$bin"
  exit 0
fi

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
tmp="$bin.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

# Version stamping: without it /version says v0.0.0-master and helm's kubeVersion checks fail.
minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
ld="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ld="$ld -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

log "building kube-apiserver, kube-controller-manager, kube-scheduler, etcd ($KUBE_VERSION)"
(cd "$here/kube" && go build -trimpath -ldflags "$ld" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    go.etcd.io/etcd/server/v3)
# etcd's module root is `package main` named after the module's last element.
[ -x "$tmp/v3" ] && mv "$tmp/v3" "$tmp/etcd"
[ -x "$tmp/server" ] && mv "$tmp/server" "$tmp/etcd"

# kwok and helm stay out of the wrapper: its replaces would force their k8s libraries.
log "building kwok $KWOK_VERSION"
GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
copy_stages "$tmp"

log "building helm $HELM_VERSION"
GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

"$tmp/kube-apiserver" --version >&2
"$tmp/etcd" --version | head -1 >&2
rm -rf "$bin"; mv "$tmp" "$bin"
trap - EXIT
# Older builds (other versions) are dead weight: ~500 MB each.
find "$root" -maxdepth 1 -name 'bin-*' ! -name "bin-$key" ! -name '*.tmp.*' -exec rm -rf {} +
log "done in $(( $(date +%s) - start ))s -> $bin"
echo "$bin"
