#!/usr/bin/env bash
# Helm, pinned, built from the Go module proxy into .cache/bin (no release download, no registry).
#   hack/helm.sh install      build it if .cache/bin/helm is missing or another version (`make helm`)
#   hack/helm.sh ARGS...      the same, then `helm ARGS...`, e.g. hack/helm.sh lint deploy/helm/ec2-operator
# The build is `go install` of the module at the pinned tag, with the ldflags helm's own Makefile
# sets (its version, and the Kubernetes version `helm template` and `helm lint` assume, from the
# client-go it is built with). Helm's go.mod has no replace directives, so `go install pkg@version`
# accepts it.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"

HELM_VERSION=v3.22.0
# client-go v0.37.x in helm v3.22.0's go.mod: Kubernetes 1.37.
K8S_MAJOR=1
K8S_MINOR=37
BIN="$ROOT/.cache/bin"
HELM="$BIN/helm"

installed() {
  [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qxF "$HELM_VERSION"
}

install() {
  installed && return 0
  command -v go >/dev/null || die "Go is needed to build helm $HELM_VERSION (https://go.dev/dl/)"
  mkdir -p "$BIN"
  # One build at a time (tests may ask at once); the next caller finds it built.
  exec 9>"$BIN/.helm.lock"
  flock 9
  installed && return 0
  echo "helm: building $HELM_VERSION from the Go module proxy into $BIN (a few minutes cold)" >&2
  local start=$SECONDS
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$K8S_MAJOR"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$K8S_MAJOR"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$K8S_MINOR"
  # Into a directory of its own, then moved: no half-written .cache/bin/helm. From /, so no go.mod
  # or go.work around it applies.
  local tmp
  tmp="$(mktemp -d "$BIN/.helm-build.XXXXXX")"
  (cd / && CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") || { rm -rf "$tmp"; die "go install helm $HELM_VERSION failed"; }
  mv -f "$tmp/helm" "$HELM"
  rm -rf "$tmp"
  installed || die "built $HELM but it does not report $HELM_VERSION"
  echo "helm: $HELM_VERSION built in $((SECONDS - start)) s" >&2
}

case "${1:-}" in
  install) install ;;
  "") die "usage: $0 install | $0 HELM-ARGS..." ;;
  *)
    install
    exec "$HELM" "$@"
    ;;
esac
