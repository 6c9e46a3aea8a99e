#!/usr/bin/env bash
# LocalStack test bed: EC2 served by LocalStack in host mode (no Docker) on 127.0.0.1, pinned, seeded.
#
#   localstack.sh up       install if needed, start (or reuse), wait for health, seed, write the env file
#   localstack.sh down     stop what `up` started (process group + descendants, by PID); idempotent
#   localstack.sh status   prints "up" (exit 0) or "down" (exit 1)
#   localstack.sh env      prints `export KEY=VALUE` lines (eval "$(localstack/localstack.sh env)")
#   localstack.sh install  only create/refresh the virtualenv
#
# `up` also starts strict_ec2.py on STRICT_EC2_PORT (after the seed, whose AMI its resolve:ssm table names): the AWS-strict EC2 (eventual consistency,
# ClientToken idempotency, state rules) that the operator talks to in the tests.
#
# Env: BED_CACHE (default <repo>/.cache), LOCALSTACK_PORT (default 4566), STRICT_EC2_PORT (4567),
#      STRICT_EC2_VISIBILITY_SECONDS (2), STRICT_EC2_TERMINATED_SECONDS (60),
#      STRICT_EC2_VOLUME_MODIFY_COOLDOWN_SECONDS (0; AWS waits 6 h between modifications of a volume),
#      LOCALSTACK_START_TIMEOUT (seconds, default 120), PYTHON (default python3, used to build the venv).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/../hack/lib.sh"
ROOT="$(repo_root)"
CACHE="${BED_CACHE:-$ROOT/.cache}"
PORT="${LOCALSTACK_PORT:-4566}"
TIMEOUT="${LOCALSTACK_START_TIMEOUT:-120}"
PYTHON="${PYTHON:-python3}"
VENV="$CACHE/localstack-venv"
STATE="$CACHE/bed/localstack"
LOG="$STATE/localstack.log"
PIDFILE="$STATE/localstack.pid"
PORTFILE="$STATE/localstack.port"
ENVFILE="$CACHE/bed/localstack.env"
STRICT_PORT="${STRICT_EC2_PORT:-4567}"
STRICT_PIDFILE="$STATE/strict-ec2.pid"
ENDPOINT="http://127.0.0.1:$PORT"
# The strict EC2's own tables (LocalStack cannot create placement groups or capacity reservations
# and does not resolve resolve:ssm: image ids); seed() exports them for the tests.
PLACEMENT_GROUP=k106-testbed-partition
CAPACITY_RESERVATION=cr-00000000000000106
SSM_AMI_PARAMETER=/k106/test/ami

log() { echo "localstack.sh: $*" >&2; }

install() {
  mkdir -p "$CACHE"
  # keep the cache out of git even where the repo's .gitignore does not list it
  [ -f "$CACHE/.gitignore" ] || echo '*' >"$CACHE/.gitignore"
  local stamp
  stamp="$(cat "$HERE/requirements.txt" "$HERE/constraints.txt" <("$PYTHON" -VV) | sha256sum | cut -d' ' -f1)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.bed-stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "installing LocalStack into $VENV (a few minutes the first time)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$HERE/requirements.txt" -c "$HERE/constraints.txt"
  echo "$stamp" >"$VENV/.bed-stamp"
}

# pid from the pid file if that process is alive and is our LocalStack, else empty
our_pid() { pid_from_file "$PIDFILE" localstack.runtime.main || true; }

# The strict EC2 in front of LocalStack: started (or restarted) with the settings of this call.
# 9>&-: it must not inherit the lock that `up` holds, or `down` would wait for it forever.
start_strict() {
  local pid image
  image="$(sed -n 's/^TEST_IMAGE_ID=//p' "$ENVFILE")"
  if pid="$(pid_from_file "$STRICT_PIDFILE" strict_ec2.py)"; then stop_pid "$pid"; fi
  port_in_use "$STRICT_PORT" && die "127.0.0.1:$STRICT_PORT is in use; set STRICT_EC2_PORT to a free port"
  setsid nohup python3 "$HERE/strict_ec2.py" --port "$STRICT_PORT" --upstream "$ENDPOINT" \
    --visibility-seconds "${STRICT_EC2_VISIBILITY_SECONDS:-2}" \
    --terminated-seconds "${STRICT_EC2_TERMINATED_SECONDS:-60}" \
    --chosen-error ami-0000000000badbad1=InvalidAMIID.NotFound \
    --chosen-error ami-0000000000badbad2=UnauthorizedOperation \
    --chosen-error x9.nonsense=InvalidParameterValue \
    --chosen-error a1.medium=InvalidParameterValue \
    --chosen-error p5.48xlarge=InsufficientInstanceCapacity \
    --chosen-error u-24tb1.metal=InstanceLimitExceeded \
    --dies-at-launch ami-0000000000badbad3 \
    --placement-group "$PLACEMENT_GROUP=partition:3" \
    --capacity-reservation "$CAPACITY_RESERVATION" \
    --ssm-parameter "$SSM_AMI_PARAMETER=$image" \
    --volume-modify-cooldown-seconds "${STRICT_EC2_VOLUME_MODIFY_COOLDOWN_SECONDS:-0}" \
    </dev/null >"$STATE/strict-ec2.log" 2>&1 9>&- &
  echo $! >"$STRICT_PIDFILE"
  for _ in $(seq 50); do port_in_use "$STRICT_PORT" && return 0; sleep 0.1; done
  die "strict EC2 did not start: $(tail -n 5 "$STATE/strict-ec2.log")"
}

stop_strict() {
  local pid
  if pid="$(pid_from_file "$STRICT_PIDFILE" strict_ec2.py)"; then stop_pid "$pid"; fi
  rm -f "$STRICT_PIDFILE"
}

healthy() {
  local health
  health="$(curl -fsS --max-time 3 "$ENDPOINT/_localstack/health" 2>/dev/null)" || return 1
  grep -Eq '"ec2": *"(available|running)"' <<<"$health" && grep -Eq '"iam": *"(available|running)"' <<<"$health"
}

wait_healthy() {
  local pid="$1" deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    healthy && return 0
    kill -0 "$pid" 2>/dev/null || { log "LocalStack (pid $pid) exited during startup"; return 1; }
    sleep 0.3
  done
  log "LocalStack not healthy after ${TIMEOUT}s"
  return 1
}

# LocalStack's entry point with moto_tags.py and moto_fast.py loaded first (moto's tag and instance
# lookups made independent of how many instances it holds; same answers). The command line still
# names localstack.runtime.main, which our_pid looks for.
RUN_MAIN='import moto_tags, moto_fast, runpy; runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)'

start() {
  mkdir -p "$STATE/fs" "$STATE/config"
  [ -f "$LOG" ] && mv -f "$LOG" "$LOG.prev"
  # Host-mode directories: this machine has /.dockerenv, so LocalStack would think it runs in its own
  # container and use /var/lib/localstack + /tmp/localstack; OVERRIDE_IN_DOCKER=0 makes it use
  # FILESYSTEM_ROOT (its tmp dir too), CONFIG_DIR replaces ~/.localstack.
  # Keep it off the network: no analytics, no TLS cert download, and the platform API (asked for a
  # service catalog when an operation is not implemented) pointed at a closed loopback port.
  # setsid: own process group, so `down` can signal everything it spawned.
  env -u AWS_ENDPOINT_URL -u AWS_PROFILE \
    GATEWAY_LISTEN="127.0.0.1:$PORT" SERVICES=ec2,iam EAGER_SERVICE_LOADING=1 DNS_ADDRESS=0 GATEWAY_SERVER=hypercorn \
    OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$STATE/fs" CONFIG_DIR="$STATE/config" \
    DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 LOCALSTACK_HOST="127.0.0.1:$PORT" \
    API_ENDPOINT=http://127.0.0.1:9/v1 ANALYTICS_API=http://127.0.0.1:9/v1 \
    PYTHONPATH="$HERE" setsid nohup "$VENV/bin/python" -c "$RUN_MAIN" </dev/null >"$LOG" 2>&1 9>&- &
  echo $! >"$PIDFILE"
  echo "$PORT" >"$PORTFILE"
  log "started LocalStack (pid $!, log $LOG)"
}

seed() {
  local out
  out="$(env -u AWS_PROFILE AWS_ENDPOINT_URL="$ENDPOINT" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
    AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 "$VENV/bin/python" "$HERE/seed.py")"
  {
    echo "AWS_ENDPOINT_URL=$ENDPOINT"
    echo "AWS_ACCESS_KEY_ID=test"
    echo "AWS_SECRET_ACCESS_KEY=test"
    echo "AWS_REGION=us-east-1"
    echo "AWS_DEFAULT_REGION=us-east-1"
    echo "STRICT_EC2_ENDPOINT=http://127.0.0.1:$STRICT_PORT"
    # For the chaos test, which freezes LocalStack (SIGSTOP) to make EC2 unreachable.
    echo "LOCALSTACK_PID=$(cat "$PIDFILE")"
    echo "TEST_PLACEMENT_GROUP=$PLACEMENT_GROUP"
    echo "TEST_CAPACITY_RESERVATION_ID=$CAPACITY_RESERVATION"
    echo "TEST_SSM_AMI_PARAMETER=$SSM_AMI_PARAMETER"
    echo "$out"
  } >"$ENVFILE.tmp"
  mv -f "$ENVFILE.tmp" "$ENVFILE"
  log "seeded; env written to $ENVFILE"
}

# every pid in the process group plus all descendants (a child may have left the group)
tree_pids() {
  local pid="$1" pids kids p
  pids="$(pgrep -g "$pid" || true) $pid"
  kids="$pids"
  while [ -n "$kids" ]; do
    local next=""
    for p in $kids; do next="$next $(pgrep -P "$p" || true)"; done
    kids="$(echo "$next" | xargs -n1 2>/dev/null | sort -u | grep -vxF -f <(echo "$pids" | xargs -n1) || true)"
    pids="$pids $kids"
  done
  echo "$pids" | xargs -n1 | sort -un | xargs
}

stop() {
  local pid
  stop_strict
  pid="$(our_pid)"
  if [ -z "$pid" ]; then
    rm -f "$PIDFILE" "$PORTFILE" "$ENVFILE"
    log "localstack already down"
    return 0
  fi
  # LocalStack runs workers: signal its process group, then make sure every one of them ends.
  local pids
  read -ra pids <<<"$(tree_pids "$pid")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  stop_pid "${pids[@]}"
  rm -f "$PIDFILE" "$PORTFILE" "$ENVFILE"
  log "localstack stopped (pid $pid)"
}

up() {
  install
  mkdir -p "$STATE"
  local pid
  pid="$(our_pid)"
  if [ -n "$pid" ]; then
    local running_port
    running_port="$(cat "$PORTFILE" 2>/dev/null || echo "?")"
    [ "$running_port" = "$PORT" ] ||
      die "LocalStack from $CACHE is already running on port $running_port (LOCALSTACK_PORT=$PORT); run '$0 down' first"
    if wait_healthy "$pid"; then
      echo "localstack already up"
    else
      tail -n 50 "$LOG" >&2 || true
      stop
      exit 1
    fi
  else
    rm -f "$PIDFILE"
    if port_in_use "$PORT"; then
      die "127.0.0.1:$PORT is already in use by a process not started by this script; stop it or set LOCALSTACK_PORT to a free port"
    fi
    start
    local t0=$EPOCHREALTIME
    if ! wait_healthy "$(cat "$PIDFILE")"; then
      log "last lines of $LOG:"
      tail -n 50 "$LOG" >&2 || true
      stop
      exit 1
    fi
    log "healthy after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')s"
  fi
  seed
  start_strict
}

cmd="${1:-}"
case "$cmd" in
  up | down)
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock 9
    if [ "$cmd" = up ]; then up; else stop; fi
    ;;
  status)
    pid="$(our_pid)"
    # ask the port it was started on, whatever LOCALSTACK_PORT says now
    if [ -n "$pid" ] && [ -f "$PORTFILE" ]; then ENDPOINT="http://127.0.0.1:$(cat "$PORTFILE")"; fi
    if [ -n "$pid" ] && healthy && pid_from_file "$STRICT_PIDFILE" strict_ec2.py >/dev/null; then
      echo up
    else
      echo down
      exit 1
    fi
    ;;
  env)
    [ -f "$ENVFILE" ] || die "no $ENVFILE: run '$0 up' first"
    sed -e '/^$/d' -e 's/^/export /' "$ENVFILE"
    ;;
  install) install ;;
  *) echo "usage: $0 up|down|status|env|install" >&2; exit 2 ;;
esac
