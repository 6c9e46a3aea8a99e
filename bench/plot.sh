#!/usr/bin/env bash
# Plots bench/results/*.json into bench/results/latest.png with matplotlib from a pinned venv.
#   bench/plot.sh install   only create/refresh the venv (.cache/bench-venv)
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/../hack/lib.sh"
ROOT="$(repo_root)"
VENV="$ROOT/.cache/bench-venv"

install() {
  local stamp
  stamp="$(cat "$ROOT/bench/requirements.txt" <(python3 -VV) | sha256sum | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.stamp" 2>/dev/null)" = "$stamp" ]; then return 0; fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/bench/requirements.txt"
  echo "$stamp" >"$VENV/.stamp"
}

install
[ "${1:-}" = install ] && exit 0
"$VENV/bin/python" "$ROOT/bench/plot.py" "$ROOT/bench/results"
