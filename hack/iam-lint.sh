#!/usr/bin/env bash
# `make lint`, IAM part: lint an IAM policy (default deploy/iam-policy.json) with parliament.
#
#   hack/iam-lint.sh [POLICY_FILE]
#
# Runs parliament's checks and its community auditors (privilege escalation, permissions
# management, credentials exposure, ...) and fails on every finding, whatever its severity, except
# the ones deploy/iam-lint.yaml allows, each with its reason. CLUSTER_ID in the policy is replaced
# with a kube-system-like UID first: parliament does not care, but it then sees a real policy.
#
# Parliament lives in its own venv, ${BED_CACHE:-<repo>/.cache}/iam-lint/venv, with the exact
# versions of deploy/iam-lint-requirements.txt. The venv is rebuilt only when the sha256 of that
# file and of `python -VV` changes (stamp file .iam-lint-stamp): pip runs once per machine.
#
# Env: BED_CACHE (default <repo>/.cache), PYTHON (default python3, used to build the venv).
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"
CACHE="${BED_CACHE:-$ROOT/.cache}"
DIR="$CACHE/iam-lint"
VENV="$DIR/venv"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$ROOT/deploy/iam-lint-requirements.txt"
CONFIG="$ROOT/deploy/iam-lint.yaml"

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
esac
(($# <= 1)) || die "usage: hack/iam-lint.sh [POLICY_FILE]"
policy="${1:-$ROOT/deploy/iam-policy.json}"
shown="${1:-deploy/iam-policy.json}" # as the user named it
[ -f "$policy" ] || die "$policy: no such file"

venv_ready() {
  [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.iam-lint-stamp" 2>/dev/null)" = "$1" ]
}

ensure_venv() {
  local stamp
  stamp="$(cat "$REQUIREMENTS" <("$PYTHON" -VV) | sha256sum | cut -d' ' -f1)"
  venv_ready "$stamp" && return 0
  mkdir -p "$DIR"
  # keep the cache out of git even where the repo's .gitignore does not list it
  [ -f "$CACHE/.gitignore" ] || echo '*' >"$CACHE/.gitignore"
  # Two `make lint` at once: one installs, the other waits and then finds the venv ready.
  exec 9>"$DIR/.lock"
  flock 9
  venv_ready "$stamp" && return 0
  echo "iam-lint: installing parliament into $VENV" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  # --no-deps: only what the requirements pin; `pip check` then fails on a missing pin.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REQUIREMENTS" \
    || die "pip install -r $REQUIREMENTS failed"
  local broken
  broken="$("$VENV/bin/pip" check --disable-pip-version-check)" \
    || die "$REQUIREMENTS does not pin everything parliament needs: $broken"
  echo "$stamp" >"$VENV/.iam-lint-stamp"
  exec 9>&-
}

ensure_venv

# Parliament through its library rather than its CLI: the findings get the Sid of their statement
# (so deploy/iam-lint.yaml can allow a finding by statement, not by line), and nothing is left in
# /tmp (the 1.6.4 CLI writes its arguments and any --files policy to /tmp/parliament.log).
"$VENV/bin/python" - "$policy" "$shown" "$CONFIG" "${CONFIG#"$ROOT"/}" <<'PY'
import json
import re
import sys
import warnings
from pathlib import Path

# parliament 1.6.4 imports pkg_resources, which setuptools 80 warns about on every import
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

import jsoncfg
import parliament

path, shown, config_path, config_shown = sys.argv[1:]
# --cluster-id defaults to the kube-system namespace UID: a UUID like this one.
text = open(path, encoding="utf-8").read().replace("CLUSTER_ID", "0b7f6c1e-3d2a-4f59-9c41-6a2e8d5b7f10")
# As `parliament --include-community-auditors --config FILE` does: their settings, then ours.
parliament.override_config(Path(parliament.__file__).parent / "community_auditors" / "config_override.yaml")
parliament.override_config(config_path)
policy = parliament.analyze_policy_string(
    text,
    shown,
    ignore_private_auditors=True,
    include_community_auditors=True,
    config=parliament.config,
)

# Where each statement starts, to name the statement a finding points into.
starts = sorted(
    (tuple(jsoncfg.node_location(s.stmt)), s.stmt.Sid(None) or "") for s in policy.statements
)


def sid_at(location):
    line = location.get("line", location.get("lineno"))
    if line is None:
        return None
    here = (line, location.get("column", 0))
    found = None
    for start, sid in starts:
        if start <= here:
            found = sid
    return found


def flatten(value):
    return ", ".join(str(v).lower() for v in value) if isinstance(value, list) else value


def allowed(finding):
    """Muted, or matched by one of its type's ignore_locations (parliament's documented rule:
    every key of an entry matches; a value is a regex or a list of them, case-insensitive, matched
    whole). Parliament 1.6.4's own matcher never matches: its make_list() turns plain YAML values
    into empty lists."""
    if finding.severity == "MUTE":
        return True
    for entry in finding.ignore_locations or []:
        if all(
            any(
                re.fullmatch(str(pattern).lower(), str(finding.location.get(key, "")).lower())
                for pattern in (wanted if isinstance(wanted, list) else [wanted])
            )
            for key, wanted in entry.items()
        ):
            return True
    return False


kept, ignored = [], 0
for finding in policy.findings:
    finding = parliament.enhance_finding(finding)
    location = {key: flatten(value) for key, value in finding.location.items()}
    sid = sid_at(location)
    if sid is not None:
        location["sid"] = sid
    if "actions" not in location and isinstance(finding.detail, list):
        actions = {d["action"].lower() for d in finding.detail if isinstance(d, dict) and "action" in d}
        if actions:
            location["actions"] = ", ".join(sorted(actions))
    finding.location = location
    if allowed(finding):
        ignored += 1
    else:
        kept.append(finding)

for f in kept:
    where = shown + (f":{f.location['line']}" if "line" in f.location else "")
    if f.location.get("sid"):
        where += f" ({f.location['sid']})"
    detail = f.detail if isinstance(f.detail, str) else json.dumps(f.detail)
    extra = {k: v for k, v in f.location.items() if k not in ("line", "column", "lineno", "filepath", "sid")}
    print(f"iam-lint: {where}: {f.severity} {f.issue}: {f.title}", file=sys.stderr)
    for more in (f.description, detail, extra and json.dumps(extra)):
        if more:
            print(f"    {more}", file=sys.stderr)

note = f" ({ignored} allowed by {config_shown})" if ignored else ""
if kept:
    print(f"iam-lint: {shown}: {len(kept)} finding{'s' if len(kept) > 1 else ''}{note}", file=sys.stderr)
    sys.exit(1)
print(f"iam-lint: {shown}: 0 findings{note}")
PY
