#!/usr/bin/env bash
# actionlint on .github/workflows/, pinned, built from the Go module proxy into .cache/bin.
#   hack/actionlint.sh            build it if missing or another version, then lint every workflow
#   hack/actionlint.sh ARGS...    the same with actionlint's own arguments, e.g. a file
# actionlint runs shellcheck on the `run:` scripts when shellcheck is on PATH (Debian's shellcheck).
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"

ACTIONLINT_VERSION=v1.7.12
BIN="$ROOT/.cache/bin"
ACTIONLINT="$BIN/actionlint"

installed() {
  [ -x "$ACTIONLINT" ] && "$ACTIONLINT" -version 2>/dev/null | head -n1 | grep -qxF "$ACTIONLINT_VERSION"
}

if ! installed; then
  command -v go >/dev/null || die "Go is needed to build actionlint $ACTIONLINT_VERSION (https://go.dev/dl/)"
  mkdir -p "$BIN"
  echo "actionlint: building $ACTIONLINT_VERSION from the Go module proxy into $BIN" >&2
  start=$SECONDS
  # Outside the repository, so no go.mod or go.work around it applies.
  (cd / && CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath -ldflags "-s -w" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION")
  installed || die "built $ACTIONLINT but it does not report $ACTIONLINT_VERSION"
  echo "actionlint: built in $((SECONDS - start)) s" >&2
fi

cd "$ROOT"
exec "$ACTIONLINT" "$@"
