#!/usr/bin/env bash
# The test bed: a real kube-apiserver + etcd (tests/cluster) and LocalStack EC2 (localstack/),
# both on 127.0.0.1, plus the demo operator if `make demo` started one.
#
#   hack/bed.sh up       start (or reuse) both, write .cache/bed/env, print how to reach them
#   hack/bed.sh down     stop everything the bed started, by PID; idempotent
#   hack/bed.sh status   exit 0 when both are up
#   hack/bed.sh env      print `export` lines (eval "$(hack/bed.sh env)")
#   hack/bed.sh stop-operator   stop only the operator `make demo` started
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"
export BED_CACHE="${BED_CACHE:-$ROOT/.cache}"
BED="$BED_CACHE/bed"
ENVFILE="$BED/env"
OPERATOR_PID="$BED/operator.pid"

say() { echo "bed: $*" >&2; }

write_env() {
  {
    sed 's/^/export /' "$BED/cluster.env"
    sed 's/^/export /' "$BED/localstack.env"
  } >"$ENVFILE"
}

up() {
  mkdir -p "$BED"
  # Both start at once: the cluster may need a long first build, LocalStack a pip install.
  "$ROOT/tests/cluster/cluster.sh" up >"$BED/cluster-up.log" 2>&1 &
  local cluster=$!
  "$ROOT/localstack/localstack.sh" up >"$BED/localstack-up.log" 2>&1 &
  local localstack=$!
  local failed=0
  wait "$cluster" || { say "cluster failed to start:"; tail -n 40 "$BED/cluster-up.log" >&2; failed=1; }
  wait "$localstack" || { say "LocalStack failed to start:"; tail -n 40 "$BED/localstack-up.log" >&2; failed=1; }
  [ "$failed" = 0 ] || exit 1
  write_env
  # shellcheck disable=SC1090
  source "$ENVFILE"
  cat >&2 <<MSG
bed: up
  kubeconfig:    $KUBECONFIG
  EC2 endpoint:  $AWS_ENDPOINT_URL (region $AWS_REGION, credentials test/test)
  use it:        eval "\$(hack/bed.sh env)"; kubectl get --raw /readyz; aws ec2 describe-instances
  stop it:       make down
MSG
}

stop_operator() {
  local pid
  if pid="$(pid_from_file "$OPERATOR_PID" ec2-operator)"; then
    stop_pid "$pid"
    say "operator (pid $pid) stopped"
  fi
  rm -f "$OPERATOR_PID"
}

down() {
  stop_operator
  # A node started on this bed (hack/node.sh) goes first, while the apiserver can still drain it.
  if compgen -G "$BED_CACHE/bed/node/*.pid" >/dev/null; then "$ROOT/hack/node.sh" down || true; fi
  "$ROOT/localstack/localstack.sh" down || true
  "$ROOT/tests/cluster/cluster.sh" down || true
  rm -f "$ENVFILE"
}

status() {
  "$ROOT/tests/cluster/cluster.sh" status >/dev/null 2>&1 && "$ROOT/localstack/localstack.sh" status >/dev/null 2>&1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if status; then echo up; else echo down; exit 1; fi ;;
  stop-operator) stop_operator ;;
  # Written afresh: LocalStack restarted on its own (make bench does) seeds new ids.
  env) [ -f "$ENVFILE" ] || { say "not up: run make up"; exit 1; }; write_env; cat "$ENVFILE" ;;
  *) echo "usage: $0 up|down|status|env|stop-operator" >&2; exit 2 ;;
esac
