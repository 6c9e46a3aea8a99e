#!/usr/bin/env bash
# Local test bed: a real etcd + kube-apiserver (RBAC on, no kubelet) on
# 127.0.0.1, built from the Go modules pinned in this directory.
#
#   cluster.sh up      build if needed, start (or reuse) the cluster
#   cluster.sh down    stop the processes recorded in the pid files
#   cluster.sh status  up/down per process
#   cluster.sh env     print `export KUBECONFIG=...` lines
#   cluster.sh restart-apiserver   stop kube-apiserver, wait DOWN_SECONDS, start it on the same etcd
#
# Env: BED_CACHE (default <repo>/.cache), ETCD_PORT (23790),
#      ETCD_PEER_PORT (23800), APISERVER_PORT (16443).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/../../hack/lib.sh"
CACHE="${BED_CACHE:-$(repo_root)/.cache}"
ETCD_PORT="${ETCD_PORT:-23790}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${APISERVER_PORT:-16443}"

bin="$CACHE/bin"
dir="$CACHE/bed/cluster"
kubeconfig="$CACHE/bed/kubeconfig"
envfile="$CACHE/bed/cluster.env"
server="https://127.0.0.1:$APISERVER_PORT"

# The pid recorded for $1 if that process is alive and still runs our binary.
live_pid() { pid_from_file "$dir/$1.pid" "$bin/$1"; }

ready() {
  [[ -f "$kubeconfig" ]] &&
    [[ "$(kubectl --kubeconfig "$kubeconfig" --request-timeout=5s get --raw /readyz 2>/dev/null)" == ok ]]
}

# The `kubernetes` Service's ClusterIP: the first address of --service-cluster-ip-range. Pods on the
# bed's node (hack/node.sh) reach the apiserver there, as in any cluster (the node forwards it to
# loopback, in kube-proxy's place), so the serving certificate names it, with the Service's DNS names.
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SERVICE_IP=10.96.0.1
APISERVER_SANS="IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
APISERVER_SANS+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
APISERVER_CERT_EXT="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=$APISERVER_SANS"

# Self-signed CA plus leaf certs, generated once and kept across up/down so
# an exported kubeconfig stays valid. EC P-256 keys: instant to generate.
gen_pki() {
  if [[ -f "$dir/pki/.done" ]]; then
    # A serving cert made before the ClusterIP was in its SANs: re-signed by the same CA (the
    # kubeconfigs stay valid). Only reached while the apiserver is stopped (cmd_up, before start).
    openssl x509 -in "$dir/pki/apiserver.crt" -noout -ext subjectAltName 2>/dev/null |
      grep -qF "IP Address:$KUBERNETES_SERVICE_IP" && return 0
    local p="$dir/pki"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p/apiserver.key"
    openssl req -new -key "$p/apiserver.key" -subj "/CN=kube-apiserver" -out "$p/apiserver.csr"
    openssl x509 -req -in "$p/apiserver.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 3650 -out "$p/apiserver.crt" -extfile <(printf '%b' "$APISERVER_CERT_EXT") 2>/dev/null
    echo "cluster.sh: re-signed the apiserver's serving certificate for $APISERVER_SANS" >&2
    return 0
  fi
  local p="$dir/pki"
  rm -rf "$p" && mkdir -p "$p" && chmod 700 "$p"
  key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$p/$1.key"; }
  # sign NAME SUBJECT EXTENSIONS
  sign() {
    key "$1"
    openssl req -new -key "$p/$1.key" -subj "$2" -out "$p/$1.csr"
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 3650 -out "$p/$1.crt" -extfile <(printf '%b' "$3") 2>/dev/null
  }
  key ca
  openssl req -x509 -new -key "$p/ca.key" -subj "/CN=k106-testbed-ca" -days 3650 -out "$p/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  sign apiserver "/CN=kube-apiserver" "$APISERVER_CERT_EXT"
  # O=system:masters is bound to cluster-admin by RBAC's bootstrap policy.
  sign admin "/O=system:masters/CN=kubernetes-admin" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  key sa
  openssl pkey -in "$p/sa.key" -pubout -out "$p/sa.pub"
  touch "$p/.done"
}

write_kubeconfig() {
  local k=(kubectl config --kubeconfig "$kubeconfig")
  rm -f "$kubeconfig"
  "${k[@]}" set-cluster k106-testbed --server "$server" --certificate-authority "$dir/pki/ca.crt" --embed-certs >/dev/null
  "${k[@]}" set-credentials kubernetes-admin --client-certificate "$dir/pki/admin.crt" \
    --client-key "$dir/pki/admin.key" --embed-certs >/dev/null
  "${k[@]}" set-context k106-testbed --cluster k106-testbed --user kubernetes-admin >/dev/null
  "${k[@]}" use-context k106-testbed >/dev/null
  chmod 600 "$kubeconfig"
  printf 'KUBECONFIG=%s\nK8S_APISERVER=%s\n' "$kubeconfig" "$server" >"$envfile"
}

# start NAME ARGS...: detached (own session, so a Ctrl-C in the caller's
# terminal does not reach it), log and pid in $dir. setsid execs in place
# here (we are not a process-group leader), so $! is the server's own pid.
start() {
  local name="$1"; shift
  setsid nohup "$bin/$name" "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

# Stops what this `up` started so a failed start leaves nothing half-running.
fail_with_log() {
  echo "cluster.sh: $1; last 30 lines of $dir/$2.log:" >&2
  tail -n 30 "$dir/$2.log" >&2 || true
  cmd_down >&2
  exit 1
}

# RBAC only (no Node authorizer): the bed has no kubelet unless hack/node.sh adds one, which binds
# its node user to system:node. The --kubelet-* flags only matter then: the apiserver reaches the
# kubelet (logs, exec) at the node's InternalIP as kubernetes-admin. --endpoint-reconciler-type=none: the
# `kubernetes` Endpoints may not hold a loopback IP (hack/node.sh forwards the Service's ClusterIP instead).
# Plain-HTTP etcd is acceptable: it only listens on loopback.
start_apiserver() {
  local p="$dir/pki"
  start kube-apiserver \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --authorization-mode=RBAC \
    --client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=false \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --kubelet-client-certificate="$p/admin.crt" --kubelet-client-key="$p/admin.key" \
    --endpoint-reconciler-type=none --profiling=false
}

# Stops kube-apiserver and, after DOWN_SECONDS (default 5), starts it again on the same etcd: what
# a control-plane upgrade or crash looks like to a controller (watches break, the data stays).
cmd_restart_apiserver() {
  local pid deadline
  pid="$(live_pid kube-apiserver)" || die "kube-apiserver is not running"
  stop_pid "$pid"
  echo "stopped kube-apiserver (pid $pid)"
  sleep "${DOWN_SECONDS:-5}"
  start_apiserver
  deadline=$((SECONDS + 120))
  until ready; do
    live_pid kube-apiserver >/dev/null || fail_with_log "kube-apiserver exited" kube-apiserver
    ((SECONDS < deadline)) || fail_with_log "kube-apiserver not ready after 120s" kube-apiserver
    sleep 1
  done
  echo "kube-apiserver up again (pid $(live_pid kube-apiserver))"
}

cmd_up() {
  "$here/build.sh" || die "build failed; fix the error above (or remove $bin to force a rebuild)"
  mkdir -p "$dir"

  if live_pid etcd >/dev/null && live_pid kube-apiserver >/dev/null && ready; then
    echo "cluster already up"
    echo "$kubeconfig"
    return 0
  fi
  # Half-up leftovers (one process died, or never became ready): start over.
  cmd_down >/dev/null

  local port var
  for var in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT; do
    port="${!var}"
    port_in_use "$port" && die "port 127.0.0.1:$port is already in use by another process; set $var to a free port"
  done

  gen_pki
  write_kubeconfig

  # Fresh data each start: tests get an empty cluster. --unsafe-no-fsync
  # because the data is throwaway and fsync dominates etcd latency.
  rm -rf "$dir/etcd-data"
  local etcd_url="http://127.0.0.1:$ETCD_PORT" peer_url="http://127.0.0.1:$ETCD_PEER_PORT"
  start etcd --name bed --data-dir "$dir/etcd-data" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
    --initial-cluster "bed=$peer_url" --unsafe-no-fsync --log-level warn

  start_apiserver

  local deadline=$((SECONDS + 120))
  until ready; do
    live_pid etcd >/dev/null || fail_with_log "etcd exited" etcd
    live_pid kube-apiserver >/dev/null || fail_with_log "kube-apiserver exited" kube-apiserver
    ((SECONDS < deadline)) || fail_with_log "kube-apiserver not ready after 120s" kube-apiserver
    sleep 1
  done
  # Created by the apiserver's own bootstrap controller shortly after ready.
  until kubectl --kubeconfig "$kubeconfig" get namespace default kube-system >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail_with_log "namespaces default/kube-system missing after 120s" kube-apiserver
    sleep 1
  done
  echo "cluster up: $server"
  echo "$kubeconfig"
}

cmd_down() {
  local name pid
  # apiserver first so it does not log etcd connection errors while stopping.
  for name in kube-apiserver etcd; do
    if pid="$(live_pid "$name")"; then
      stop_pid "$pid"
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$dir/$name.pid"
  done
}

cmd_status() {
  local name pid
  for name in etcd kube-apiserver; do
    if pid="$(live_pid "$name")"; then echo "$name: up (pid $pid)"; else echo "$name: down"; fi
  done
  if ready; then echo "readyz: ok ($server)"; else echo "readyz: not ready"; fi
}

cmd_env() {
  echo "export KUBECONFIG=$kubeconfig"
  echo "export K8S_APISERVER=$server"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  restart-apiserver) cmd_restart_apiserver ;;
  *) echo "usage: $0 up|down|status|env|restart-apiserver" >&2; exit 2 ;;
esac
