#!/usr/bin/env bash
# A real Argo CD (github.com/argoproj/argo-cd/v3), built from its Go module and run out of cluster
# against the test bed (hack/bed.sh up): repo server + application controller, a Redis and a
# `git daemon` with one bare repo, all on 127.0.0.1.
#
#   hack/argocd.sh build   download the module (Go module proxy), build .cache/argocd/bin/argocd
#   hack/argocd.sh up      install the CRDs and config, start redis, git, repo server, controller
#   hack/argocd.sh down    stop everything `up` started, by PID; idempotent
#   hack/argocd.sh status  exit 0 when every process runs
#   hack/argocd.sh env     print `export` lines (eval "$(hack/argocd.sh env)")
#   hack/argocd.sh health FILE...  Argo CD's own Lua health check of resource YAMLs, offline, with
#                                  deploy/argocd/argocd-cm-patch.yaml (no cluster needed)
#
# One binary is every component, chosen by argv[0] (cmd/main.go; ARGOCD_BINARY_NAME also works):
# `build` puts symlinks argocd-repo-server and argocd-application-controller beside it.
#
# Destination: Applications use ARGOCD_DEST_SERVER=https://kubernetes.default.svc, Argo CD's
# built-in "in-cluster" cluster. The controller runs with ARGOCD_FAKE_IN_CLUSTER=true, which makes
# that cluster's rest config the one in KUBECONFIG (the bed's apiserver, admin client cert) in place
# of the pod service account; the URL is never dialled and no cluster Secret is needed.
#
# Redis is required (the components have no in-memory cache): Debian's redis-server, installed with
# apt-get when it is not on PATH, runs on loopback without persistence.
#
# For tests: every `up` makes a fresh, empty manifests.git (branch main, one empty commit) on a new
# port: ARGOCD_GIT_URL in the env file. A push is picked up in one to two ARGOCD_APP_RESYNC periods
# (the expiry check rides on an informer resync of the same period, which often comes just short);
# `kubectl -n argocd annotate application NAME argocd.argoproj.io/refresh=normal --overwrite` makes
# it about 1 s. Each resource's health is in the Application's .status.resources[].health.
# The bed has no kube-controller-manager (no garbage collector) unless hack/node.sh is up: give
# Applications syncOptions [PrunePropagationPolicy=background], or a pruned object stays "Pending
# deletion" with the foregroundDeletion finalizer forever (Argo CD prunes in the foreground).
# `down` stops the processes only: Applications and what they deployed stay in the bed.
#
# Env for up (defaults in brackets): KUBECONFIG [from hack/bed.sh env]; BED_CACHE as for hack/bed.sh,
#   state and logs in $BED_CACHE/bed/argocd; ARGOCD_APP_RESYNC [10] seconds between the
#   controller's comparisons with git; ARGOCD_REVISION_CACHE [1s] how long the repo server keeps
#   what a branch resolved to; ARGOCD_LOG_LEVEL [info]; ARGOCD_REDIS_PORT, ARGOCD_GIT_PORT,
#   ARGOCD_REPO_SERVER_PORT, ARGOCD_REPO_SERVER_METRICS_PORT, ARGOCD_CONTROLLER_METRICS_PORT [a free
#   port each; all listen on 127.0.0.1 but the controller's metrics, which Argo CD binds to 0.0.0.0].
set -euo pipefail

# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"
MODULE=github.com/argoproj/argo-cd/v3
VERSION="${ARGOCD_VERSION:-v3.2.0}"
CACHE="$ROOT/.cache/argocd"
SRC="$CACHE/src"
BIN="$CACHE/bin/argocd"
STAMP="$CACHE/bin/.stamp"

say() { echo "argocd: $*" >&2; }

# The stamp: what the binary was built from.
stamp() { printf '%s@%s %s\n' "$MODULE" "$VERSION" "$(go version)"; }

build() {
  if [[ -x "$BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp)" && -d "$SRC/manifests/crds" ]]; then
    say "$BIN is up to date ($VERSION)"
    return 0
  fi
  local t0=$SECONDS kubectl_version
  mkdir -p "$CACHE/bin"
  [[ -f "$ROOT/.cache/.gitignore" ]] || echo '*' >"$ROOT/.cache/.gitignore"
  rm -f "$STAMP"
  go_module_copy "$MODULE" "$VERSION" "$SRC"
  kubectl_version="$(cd "$SRC" && go list -mod=readonly -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' k8s.io/client-go)" ||
    die "go list in $SRC failed"
  say "building $MODULE@$VERSION (./cmd) in $SRC; the first build takes a while"
  # The version variables are the ones Argo CD's Makefile sets (PACKAGE=.../common).
  local p="$MODULE/common"
  (cd "$SRC" && GODEBUG="tarinsecurepath=0,zipinsecurepath=0" CGO_ENABLED=0 nice -n 19 go build -mod=readonly -trimpath \
    -ldflags "-s -w -X $p.version=${VERSION#v} -X $p.buildDate=$MODULE_TIME -X $p.gitCommit=$MODULE_COMMIT \
      -X $p.gitTag=$VERSION -X $p.gitTreeState=clean -X $p.kubectlVersion=$kubectl_version" \
    -o "$BIN" ./cmd) || die "building Argo CD failed (see go output above)"
  stamp >"$STAMP"
  say "built $BIN in $((SECONDS - t0))s"
}

# The CLI and each component, by argv[0] (cmd/main.go): symlinks, so each process's command line
# names its component (pid_from_file matches on it).
COMPONENTS=(argocd-repo-server argocd-application-controller)
links() {
  local c
  for c in "${COMPONENTS[@]}"; do ln -sfn argocd "$CACHE/bin/$c"; done
}

# ---- up / down -------------------------------------------------------------------------------

export BED_CACHE="${BED_CACHE:-$ROOT/.cache}"
S="$BED_CACHE/bed/argocd"
ENVFILE="$S/env"
NS=argocd
PATCH="$ROOT/deploy/argocd/argocd-cm-patch.yaml"
# Applications target this; see the header. The controller resolves it to the bed's kubeconfig.
DEST_SERVER=https://kubernetes.default.svc

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# bed_env: KUBECONFIG from hack/bed.sh env unless set.
bed_env() {
  if [[ -z "${KUBECONFIG:-}" ]]; then
    local bedenv
    bedenv="$("$ROOT/hack/bed.sh" env)" || die "the bed is not up (hack/bed.sh up), or set KUBECONFIG"
    # shellcheck disable=SC1090
    source <(echo "$bedenv")
  fi
  [[ -f "${KUBECONFIG:?}" ]] || die "KUBECONFIG=$KUBECONFIG: no such file (a single path is needed)"
}

# The full argocd-cm (labelled part-of=argocd: the settings informer selects on it) with the data of
# deploy/argocd/argocd-cm-patch.yaml (its only
# top-level key is `data:`, so it is appended as is).
write_cm() {
  {
    cat <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: $NS
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
YAML
    grep -v '^#' "$PATCH"
  } >"$1"
  grep -q '^data:' "$1" || die "$PATCH has no data: key"
}

# What must be in the cluster before the components start: the CRDs, the namespace, argocd-cm,
# argocd-rbac-cm, argocd-secret (server.secretkey, else the settings are incomplete) and the
# `default` AppProject (argocd-server creates it in a real install; it is not run here).
install_config() {
  local k=(kubectl --kubeconfig "$KUBECONFIG" --request-timeout=30s) crd
  # apply FILE: server-side, as this script's field manager (- reads standard input).
  apply() { "${k[@]}" apply --server-side --force-conflicts --field-manager=hack-argocd -f "$1" >/dev/null; }
  for crd in application-crd appproject-crd applicationset-crd; do
    apply "$SRC/manifests/crds/$crd.yaml" ||
      die "applying $crd.yaml failed"
  done
  "${k[@]}" wait --for condition=Established --timeout=60s \
    crd/applications.argoproj.io crd/appprojects.argoproj.io >/dev/null || die "the Argo CD CRDs are not Established"
  write_cm "$S/argocd-cm.yaml"
  apply - <<YAML || die "creating namespace $NS failed"
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
YAML
  apply "$S/argocd-cm.yaml" ||
    die "applying argocd-cm failed"
  # The secret key is made once per namespace and kept (a re-apply would rotate it).
  if ! "${k[@]}" -n "$NS" get secret argocd-secret >/dev/null 2>&1; then
    apply - <<YAML || die "creating argocd-secret failed"
apiVersion: v1
kind: Secret
metadata:
  name: argocd-secret
  namespace: $NS
  labels:
    app.kubernetes.io/name: argocd-secret
    app.kubernetes.io/part-of: argocd
type: Opaque
stringData:
  server.secretkey: $(openssl rand -base64 32)
YAML
  fi
  apply - <<YAML || die "creating argocd-rbac-cm / the default AppProject failed"
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-rbac-cm
  namespace: $NS
  labels:
    app.kubernetes.io/name: argocd-rbac-cm
    app.kubernetes.io/part-of: argocd
---
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: default
  namespace: $NS
spec:
  sourceRepos: ["*"]
  destinations: [{server: "*", namespace: "*"}]
  clusterResourceWhitelist: [{group: "*", kind: "*"}]
YAML
}

# Debian's redis-server: the components cache in Redis and have no in-memory option
# (util/cache/cache.go always builds a Redis client).
ensure_redis() {
  command -v redis-server >/dev/null && return 0
  say "installing redis-server (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends redis-server >"$S/apt.log" 2>&1 || {
    apt-get update >>"$S/apt.log" 2>&1 &&
      apt-get install -y --no-install-recommends redis-server >>"$S/apt.log" 2>&1
  } || { tail -n 20 "$S/apt.log" >&2; die "apt-get install redis-server failed"; }
  command -v redis-server >/dev/null || die "redis-server is not on PATH after installing it"
}

# start NAME MATCH CMD...: detached (own session), log and pid in $S; setsid and env exec in place, so
# $! is the server's own pid. MATCH (a string of its command line) goes beside the pid for `down`.
start() {
  local name="$1" match="$2"
  shift 2
  setsid nohup "$@" >"$S/$name.log" 2>&1 </dev/null &
  echo $! >"$S/$name.pid"
  echo "$match" >"$S/$name.match"
}

live_pid() { pid_from_file "$S/$1.pid" "$(cat "$S/$1.match" 2>/dev/null || echo "$S")"; }

PROCS=(argocd-application-controller argocd-repo-server git-daemon redis)

fail_with_log() {
  echo "argocd.sh: $1; last 30 lines of $S/$2.log:" >&2
  tail -n 30 "$S/$2.log" >&2 || true
  down >&2
  exit 1
}

# wait_http NAME URL SECONDS: until URL answers 200, while process NAME lives.
wait_http() {
  local deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null --max-time 2 "$2" 2>/dev/null; do
    live_pid "$1" >/dev/null || fail_with_log "$1 exited" "$1"
    ((SECONDS < deadline)) || fail_with_log "$1 not ready after $3s ($2)" "$1"
    sleep 0.5
  done
}

# The bare repo manifests.git, branch main holding one empty commit, served by git daemon.
init_git() {
  local repo="$S/git/manifests.git" tree commit
  rm -rf "$S/git"
  mkdir -p "$S/git"
  git init -q --bare -b main "$repo"
  tree="$(git --git-dir="$repo" mktree </dev/null)"
  commit="$(GIT_AUTHOR_NAME=bed GIT_AUTHOR_EMAIL=bed@localhost GIT_COMMITTER_NAME=bed GIT_COMMITTER_EMAIL=bed@localhost \
    git --git-dir="$repo" commit-tree -m "empty" "$tree")"
  git --git-dir="$repo" update-ref refs/heads/main "$commit"
}

status() {
  local p
  for p in "${PROCS[@]}"; do live_pid "$p" >/dev/null || return 1; done
  [[ -f "$ENVFILE" ]]
}

up() {
  [[ -x "$BIN" && -f "$STAMP" ]] || build
  links
  bed_env
  mkdir -p "$S"
  if status; then
    say "already up"
    usage_msg
    return 0
  fi
  down >/dev/null 2>&1 # half-up leftovers: start over
  local t0=$SECONDS
  ensure_redis
  install_config

  local redis_port="${ARGOCD_REDIS_PORT:-$(free_port)}" git_port="${ARGOCD_GIT_PORT:-$(free_port)}"
  local repo_port="${ARGOCD_REPO_SERVER_PORT:-$(free_port)}" repo_metrics="${ARGOCD_REPO_SERVER_METRICS_PORT:-$(free_port)}"
  local ctl_metrics="${ARGOCD_CONTROLLER_METRICS_PORT:-$(free_port)}" port
  for port in "$redis_port" "$git_port" "$repo_port" "$repo_metrics" "$ctl_metrics"; do
    port_in_use "$port" && die "port 127.0.0.1:$port is already in use"
  done

  # Redis: loopback, no persistence (no RDB, no AOF), no config file.
  mkdir -p "$S/redis"
  start redis "redis-server" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$S/redis" --protected-mode yes --daemonize no --loglevel warning
  local deadline=$((SECONDS + 30))
  until [[ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" == PONG ]]; do
    live_pid redis >/dev/null || fail_with_log "redis-server exited" redis
    ((SECONDS < deadline)) || fail_with_log "redis-server not answering after 30s" redis
    sleep 0.2
  done

  # git daemon, run as git-daemon itself (`git daemon` would be a wrapper process around it).
  init_git
  start git-daemon "--base-path=$S/git" "$(git --exec-path)/git-daemon" --reuseaddr --listen=127.0.0.1 \
    --port="$git_port" --base-path="$S/git" --export-all --enable=receive-pack --informative-errors "$S/git"
  deadline=$((SECONDS + 30))
  until git ls-remote "git://127.0.0.1:$git_port/manifests.git" >/dev/null 2>&1; do
    live_pid git-daemon >/dev/null || fail_with_log "git daemon exited" git-daemon
    ((SECONDS < deadline)) || fail_with_log "git daemon not serving after 30s" git-daemon
    sleep 0.2
  done

  # Everything the components write outside the cluster stays in $S: temp dirs (the repo server's
  # clones), the git ask-pass socket (default /tmp/reposerver-ask-pass.sock, shared machine-wide),
  # GnuPG (off), the TLS and SSH known-hosts data paths.
  mkdir -p "$S/tmp" "$S/app-config/tls" "$S/app-config/ssh" "$S/app-config/gpg/source" "$S/app-config/gpg/keys"
  local common_env=(env TMPDIR="$S/tmp" ARGOCD_ASK_PASS_SOCK="$S/askpass.sock" ARGOCD_GPG_ENABLED=false
    ARGOCD_TLS_DATA_PATH="$S/app-config/tls" ARGOCD_SSH_DATA_PATH="$S/app-config/ssh"
    ARGOCD_GNUPGHOME="$S/app-config/gpg/keys" ARGOCD_APP_CONF_PATH="$S/app-config")
  local level="${ARGOCD_LOG_LEVEL:-info}"

  # --revision-cache-expiration: how long the repo server keeps what a branch resolved to (default
  # 3 min, Argo CD counts on git webhooks); 1s makes a push show within one --app-resync.
  start argocd-repo-server "$CACHE/bin/argocd-repo-server" "${common_env[@]}" "$CACHE/bin/argocd-repo-server" \
    --address 127.0.0.1 --port "$repo_port" --metrics-address 127.0.0.1 --metrics-port "$repo_metrics" \
    --disable-tls --redis "127.0.0.1:$redis_port" --logformat text --loglevel "$level" \
    --revision-cache-expiration "${ARGOCD_REVISION_CACHE:-1s}"

  # --app-resync 10 --app-resync-jitter 0: compare with git every 10 s (default 120 s + up to 60 s);
  # --self-heal-*: re-sync a drifted app after 2 s, with no growing backoff; --persist-resource-health:
  # each resource's health in .status.resources[].health (v3 keeps it only in Redis by default), so
  # tests read it with kubectl.
  # ARGOCD_FAKE_IN_CLUSTER: the in-cluster destination uses KUBECONFIG (the bed) in place of the
  # pod's service account (pkg/apis/application/v1alpha1/types.go RawRestConfig).
  start argocd-application-controller "$CACHE/bin/argocd-application-controller" "${common_env[@]}" \
    KUBECONFIG="$KUBECONFIG" ARGOCD_FAKE_IN_CLUSTER=true ARGOCD_CONTROLLER_REPLICAS=1 \
    "$CACHE/bin/argocd-application-controller" \
    --kubeconfig "$KUBECONFIG" --namespace "$NS" \
    --repo-server "127.0.0.1:$repo_port" --repo-server-plaintext \
    --redis "127.0.0.1:$redis_port" --metrics-port "$ctl_metrics" \
    --app-resync "${ARGOCD_APP_RESYNC:-10}" --app-resync-jitter 0 --repo-error-grace-period-seconds 10 \
    --self-heal-timeout-seconds 2 --self-heal-backoff-timeout-seconds 0 \
    --status-processors 4 --operation-processors 2 --persist-resource-health \
    --logformat text --loglevel "$level"

  wait_http argocd-repo-server "http://127.0.0.1:$repo_metrics/healthz?full=true" 120
  wait_http argocd-application-controller "http://127.0.0.1:$ctl_metrics/healthz" 120

  cat >"$ENVFILE" <<ENV
export ARGOCD_NAMESPACE=$NS
export ARGOCD_GIT_URL=git://127.0.0.1:$git_port/manifests.git
export ARGOCD_GIT_DIR=$S/git/manifests.git
export ARGOCD_DEST_SERVER=$DEST_SERVER
export ARGOCD_REDIS=127.0.0.1:$redis_port
export ARGOCD_REPO_SERVER=127.0.0.1:$repo_port
export ARGOCD_CONTROLLER_METRICS=http://127.0.0.1:$ctl_metrics/metrics
export ARGOCD_REPO_SERVER_PID=$(cat "$S/argocd-repo-server.pid")
export ARGOCD_CONTROLLER_PID=$(cat "$S/argocd-application-controller.pid")
export ARGOCD_REDIS_PID=$(cat "$S/redis.pid")
export ARGOCD_GIT_DAEMON_PID=$(cat "$S/git-daemon.pid")
export ARGOCD_LOGS=$S
ENV
  say "up in $((SECONDS - t0))s"
  usage_msg
}

usage_msg() {
  # shellcheck disable=SC1090
  source "$ENVFILE"
  cat >&2 <<MSG
argocd: repo server $ARGOCD_REPO_SERVER, controller (pid $ARGOCD_CONTROLLER_PID), namespace $ARGOCD_NAMESPACE
  git:      $ARGOCD_GIT_URL  (branch main; push to it: git push $ARGOCD_GIT_URL HEAD:main)
  apps:     destination server $ARGOCD_DEST_SERVER (the bed's apiserver), project default
  use it:   eval "\$(hack/argocd.sh env)"; kubectl -n argocd get applications
  logs:     $ARGOCD_LOGS/*.log
  stop it:  hack/argocd.sh down
MSG
}

down() {
  local p pid
  # The controller first, so it does not log the repo server's or Redis's going.
  for p in "${PROCS[@]}"; do
    if pid="$(live_pid "$p")"; then
      stop_pid "$pid"
      say "stopped $p (pid $pid)"
    fi
    rm -f "$S/$p.pid" "$S/$p.match"
  done
  rm -f "$ENVFILE" "$S/askpass.sock"
}

# health FILE...: Argo CD's Lua health assessment of each resource YAML, with the argocd-cm this
# script installs (argocd admin settings resource-overrides health; offline: a fake clientset holds
# the ConfigMap, no cluster is contacted). The ConfigMap is left in .cache/argocd/argocd-cm.yaml.
health() {
  (($# > 0)) || die "usage: $0 health RESOURCE_YAML..."
  [[ -x "$BIN" ]] || build
  local cm="$CACHE/argocd-cm.yaml" f
  write_cm "$cm"
  for f in "$@"; do
    (($# > 1)) && echo "== $f"
    "$BIN" admin settings resource-overrides health "$f" --argocd-cm-path "$cm" --loglevel warn
  done
}

case "${1:-}" in
  build) build; links ;;
  up) up ;;
  down) down ;;
  status) if status; then echo up; else echo down; exit 1; fi ;;
  env) [[ -f "$ENVFILE" ]] || die "not up: run $0 up"; cat "$ENVFILE" ;;
  health) shift; health "$@" ;;
  *) echo "usage: $0 build|up|down|status|env|health FILE..." >&2; exit 2 ;;
esac
