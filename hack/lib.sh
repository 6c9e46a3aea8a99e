# Shell helpers shared by the bed's scripts (hack/, localstack/, tests/cluster/). Source it:
#   . "$(dirname "${BASH_SOURCE[0]}")/../hack/lib.sh"     # adjust the path to hack/
# Every process is found through a pid file and checked before it is signalled: we end only
# what we started, by PID.

# The repository root, from this file's own place (works outside a git checkout too).
repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

# die MESSAGE: print to stderr, prefixed with the calling script's name, and exit 1.
die() {
  echo "$(basename "$0"): ERROR: $*" >&2
  exit 1
}

# port_in_use PORT: true when something listens on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive PID: running and not a zombie (an exited process its parent has not reaped yet).
pid_alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" && [[ -n "$state" && "$state" != Z ]]
}

# pid_from_file FILE MATCH: print the pid recorded in FILE if that process is alive and its
# command line contains MATCH (a bare `kill -0` could hit an unrelated process that reused it).
pid_from_file() {
  local pid
  pid="$(cat "$1" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
  echo "$pid"
}

# stop_pid PID...: TERM, wait up to STOP_TIMEOUT seconds (default 10) for all to exit, then KILL
# the ones left.
stop_pid() {
  local pid alive i
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < ${STOP_TIMEOUT:-10} * 10; i++)); do
    alive=()
    for pid in "$@"; do pid_alive "$pid" && alive+=("$pid"); done
    ((${#alive[@]} == 0)) && return 0
    sleep 0.1
  done
  echo "$(basename "$0"): still alive after ${STOP_TIMEOUT:-10}s, sending KILL to ${alive[*]}" >&2
  kill -KILL "${alive[@]}" 2>/dev/null || true
  sleep 0.2
}

# go_module_copy MODULE VERSION DEST: download the Go module (from outside any go.mod, so the
# download is the module itself, not a dependency) and copy it to DEST, writable: the module cache
# is read-only, and a module's replace lines apply only when it is the main module, as there.
# Sets MODULE_COMMIT (empty when the module came from the cache without its origin) and
# MODULE_TIME (the version's date), for the build's version flags.
go_module_copy() {
  local module=$1 version=$2 dest=$3 info dir
  info="$(cd / && go mod download -json "$module@$version")" || die "go mod download $module@$version failed"
  dir="$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("Dir") or "")' <<<"$info")"
  [[ -d "$dir" ]] || die "no module directory in: $info"
  # shellcheck disable=SC2034 # read by the caller
  MODULE_COMMIT="$(python3 -c 'import json,sys; print((json.load(sys.stdin).get("Origin") or {}).get("Hash", ""))' <<<"$info")"
  # shellcheck disable=SC2034 # read by the caller
  MODULE_TIME="$(python3 -c 'import json,sys; print(json.load(open(json.load(sys.stdin)["Info"]))["Time"])' <<<"$info")"
  rm -rf "$dest"
  cp -r "$dir" "$dest"
  chmod -R u+w "$dest"
}
