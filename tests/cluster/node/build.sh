#!/usr/bin/env bash
# Builds the test bed node's binaries into $BED_CACHE/node-bin, apart from the apiserver's
# ($BED_CACHE/bin, ../build.sh) so neither build slows or invalidates the other:
#   k8s/         kubelet, kube-controller-manager, kube-scheduler: the same k8s.io/kubernetes module
#                and dependency versions as ../go.mod, so they share Go's build cache with kube-apiserver
#   containerd/  containerd 2.x, ctr, containerd-shim-runc-v2 (Debian 12's containerd is 1.6; kubelet
#                1.36 needs 2.x)
#   images/      pause (the pod sandbox), tokencheck (a test workload), mkimage (writes image tars)
# Each group has its own stamp of its inputs and is skipped when unchanged.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/../../../hack/lib.sh"
CACHE="${BED_CACHE:-$(repo_root)/.cache}"
bin="$CACHE/node-bin"
mkdir -p "$bin"

# build GROUP "BINARIES" GO-BUILD-ARGS...: go build in $here/GROUP unless its stamp matches.
build() {
  local group="$1" bins="$2" stamp stampfile="$bin/.stamp-$1" b missing=0
  shift 2
  stamp="$(cd "$here/$group" && find . -name 'go.*' -o -name '*.go' | LC_ALL=C sort |
    xargs cat - "$here/build.sh" <(go version) | sha256sum | cut -d' ' -f1)"
  for b in $bins; do [[ -x "$bin/$b" ]] || missing=1; done
  if [[ "$missing" == 0 && -f "$stampfile" && "$(cat "$stampfile")" == "$stamp" ]]; then
    return 0
  fi
  echo "building node $group: $bins" >&2
  rm -f "$stampfile"
  local t0=$SECONDS
  if ! (cd "$here/$group" && go build -mod=readonly -trimpath "$@"); then
    echo "ERROR: building node $group failed (see go output above)" >&2
    exit 1
  fi
  echo "built node $group in $((SECONDS - t0))s" >&2
  echo "$stamp" >"$stampfile"
}

# Same version ldflags as ../build.sh (no -X in compiled packages, so the build cache is shared).
kver="$(cd "$here/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
cb=k8s.io/component-base/version
build k8s "kubelet kube-controller-manager kube-scheduler" \
  -ldflags="-s -w -X $cb.gitVersion=$kver -X $cb.gitMajor=1 -X $cb.gitMinor=$(cut -d. -f2 <<<"$kver") -X $cb.gitTreeState=clean" \
  -o "$bin/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler

# Static (no btrfs snapshotter, which needs cgo); the shim is found next to containerd via PATH.
cver="$(cd "$here/containerd" && go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)"
CGO_ENABLED=0 build containerd "containerd ctr containerd-shim-runc-v2" \
  -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$cver" \
  -o "$bin/" github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2

# Static: they run alone in scratch images.
CGO_ENABLED=0 build images "pause tokencheck mkimage" -ldflags="-s -w" -o "$bin/" ./cmd/pause ./cmd/tokencheck ./cmd/mkimage
