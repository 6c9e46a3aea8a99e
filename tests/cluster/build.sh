#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the modules pinned in go.mod into
# $CACHE/bin. Skips the (slow, several-minute) build when a stamp of the
# inputs is unchanged and both binaries exist.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/../../hack/lib.sh"
CACHE="${BED_CACHE:-$(repo_root)/.cache}"
bin="$CACHE/bin"
stampfile="$bin/.stamp"

# Anything that changes the resulting binaries must be in the stamp.
stamp="$(cat "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}" <(go version) | sha256sum | cut -d' ' -f1)"

if [[ -x "$bin/kube-apiserver" && -x "$bin/etcd" && -f "$stampfile" && "$(cat "$stampfile")" == "$stamp" ]]; then
  exit 0
fi

echo "building kube-apiserver + etcd (first time takes several minutes)" >&2
mkdir -p "$bin"
rm -f "$stampfile"
cd "$here"

# Without these the server reports v0.0.0-master and kubectl warns about skew.
kver="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="$(cut -d. -f2 <<<"$kver")"
cb=k8s.io/component-base/version
ldflags="-s -w -X $cb.gitVersion=$kver -X $cb.gitMajor=1 -X $cb.gitMinor=$minor -X $cb.gitTreeState=clean"

# One invocation so both binaries share compiled packages (grpc, otel, ...).
# -mod=readonly: go.sum is committed; never touch the network for resolution
# beyond downloading the pinned modules.
if ! go build -mod=readonly -trimpath -ldflags="$ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver ./cmd/etcd; then
  echo "ERROR: building kube-apiserver/etcd failed (see go output above)" >&2
  exit 1
fi
echo "$stamp" >"$stampfile"
