#!/usr/bin/env bash
# A real node on top of the running test bed (hack/bed.sh up): containerd 2.x + runc, CNI bridge,
# kube-controller-manager, kube-scheduler and a kubelet registered as node $NODE_NAME, all built
# from the modules pinned in tests/cluster/node (tests/cluster/node/build.sh) into $BED_CACHE/node-bin.
#
#   hack/node.sh up       install/build if needed, start (or reuse) everything, wait for the node Ready
#   hack/node.sh down     drain, stop everything it started (by PID), unmount, remove the bridge
#   hack/node.sh status   exit 0 when all processes run and the node is Ready
#   hack/node.sh env      print `export` lines (CONTAINERD_ADDRESS, NODE_NAME, NODE_IMAGES, ...)
#   hack/node.sh load-image TAR      import an image tar (docker save / OCI layout) into the node
#   hack/node.sh ctr ARGS...         run ctr against the node's containerd (namespace k8s.io)
#
# Images: there is no registry. The node's pause image ($PAUSE_IMAGE) and a test workload
# (localhost/bed/tokencheck:1, see tests/cluster/node/images) are built locally and imported;
# pods must use images already imported (imagePullPolicy IfNotPresent or Never).
#
# Network: pods on the bridge $NODE_BRIDGE ($NODE_POD_CIDR, the host end $NODE_IP is also the node's
# InternalIP and the kubelet's address) get no default route, so their traffic stays on the bridge:
# they reach the other pods, the host end, and $NODE_SERVICE_CIDR through the host end. There is no
# kube-proxy and the bed's services listen on 127.0.0.1 only; in their place hostfwd.py
# (tests/cluster/node) forwards, while the node is up:
#   - the `kubernetes` Service's ClusterIP:port (10.96.0.1:443, an address on the bridge) to the
#     apiserver on loopback: a pod uses the KUBERNETES_SERVICE_HOST/PORT the kubelet injects, as in
#     any cluster (the bed's serving certificate names the ClusterIP, see tests/cluster/cluster.sh);
#   - $NODE_IP:P to 127.0.0.1:P for each port P in $NODE_HOST_PORTS (LocalStack's and the strict
#     EC2's): e.g. a pod's AWS endpoint is http://$NODE_IP:$STRICT_EC2_PORT.
# The rest of $NODE_SERVICE_CIDR is blackholed on the host, so nothing leaves the machine. A
# hostNetwork pod can also use the apiserver at KUBERNETES_SERVICE_HOST=127.0.0.1
# KUBERNETES_SERVICE_PORT=$APISERVER_PORT (its env wins over the injected one).
#
# Env: BED_CACHE, APISERVER_PORT (as for hack/bed.sh), NODE_NAME (bed-node), KUBELET_PORT (10250),
#      KUBELET_HEALTHZ_PORT (10248), KCM_PORT (10257), SCHEDULER_PORT (10259), NODE_BRIDGE (bed0),
#      NODE_POD_CIDR (10.88.0.0/24), NODE_IP (10.88.0.1), NODE_SERVICE_CIDR (10.96.0.0/24, must match
#      the apiserver's --service-cluster-ip-range), NODE_HOST_PORTS ("$LOCALSTACK_PORT $STRICT_EC2_PORT",
#      4566 4567 by default). One node per machine: the bridge is host-wide.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"
export BED_CACHE="${BED_CACHE:-$ROOT/.cache}"
APISERVER_PORT="${APISERVER_PORT:-16443}"
NODE_NAME="${NODE_NAME:-bed-node}"
KUBELET_PORT="${KUBELET_PORT:-10250}"
KUBELET_HEALTHZ_PORT="${KUBELET_HEALTHZ_PORT:-10248}"
KCM_PORT="${KCM_PORT:-10257}"
SCHEDULER_PORT="${SCHEDULER_PORT:-10259}"
NODE_BRIDGE="${NODE_BRIDGE:-bed0}"
NODE_POD_CIDR="${NODE_POD_CIDR:-10.88.0.0/24}"
NODE_IP="${NODE_IP:-10.88.0.1}"
NODE_SERVICE_CIDR="${NODE_SERVICE_CIDR:-10.96.0.0/24}"
NODE_HOST_PORTS="${NODE_HOST_PORTS:-${LOCALSTACK_PORT:-4566} ${STRICT_EC2_PORT:-4567}}"
PAUSE_IMAGE=localhost/bed/pause:1
TEST_IMAGE=localhost/bed/tokencheck:1

bin="$BED_CACHE/node-bin"
D="$BED_CACHE/bed/node"
cpki="$BED_CACHE/bed/cluster/pki"
pki="$D/pki"
sock="$D/containerd/containerd.sock"
kubeconfig="$BED_CACHE/bed/kubeconfig"
server="https://127.0.0.1:$APISERVER_PORT"
envfile="$D/env"
# Started in this order, stopped in reverse (hostfwd: tests/cluster/node/hostfwd.py).
COMPONENTS=(hostfwd containerd kube-controller-manager kube-scheduler kubelet)
KUBERNETES_SERVICE_ADDR=""

say() { echo "node: $*" >&2; }
k() { kubectl --kubeconfig "$kubeconfig" --request-timeout=10s "$@"; }
ctr_() { "$bin/ctr" --address "$sock" --namespace k8s.io "$@"; }
live_pid() {
  if [[ "$1" == hostfwd ]]; then hostfwd_pid; else pid_from_file "$D/$1.pid" "$bin/$1"; fi
}

# Debian packages: runc (containerd's runtime), the CNI plugins, iptables (portmap, kubelet),
# conntrack (kubelet, portmap). Only installs what is missing.
install_packages() {
  local need=() p
  for p in runc containernetworking-plugins iptables conntrack; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  ((${#need[@]} == 0)) && return 0
  say "installing ${need[*]}"
  [[ "$(id -u)" == 0 ]] || die "need root to install ${need[*]}"
  # Lock timeout: hack/image.sh may be installing podman at the same time (make test-install).
  local apt=(apt-get -o DPkg::Lock::Timeout=600)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${need[@]}" >"$D/apt.log" 2>&1 || {
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$D/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${need[@]}" >>"$D/apt.log" 2>&1
  } || { tail -n 20 "$D/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
}

# Client and serving certificates signed by the bed's CA; regenerated when the CA changes.
gen_pki() {
  local ca_sum
  ca_sum="$(sha256sum <"$cpki/ca.crt" | cut -d' ' -f1)"
  [[ -f "$pki/.done" && "$(cat "$pki/.done")" == "$ca_sum" ]] && return 0
  rm -rf "$pki" && mkdir -p "$pki" && chmod 700 "$pki"
  # sign NAME SUBJECT EXTENSIONS
  sign() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key"
    openssl req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
    openssl x509 -req -in "$pki/$1.csr" -CA "$cpki/ca.crt" -CAkey "$cpki/ca.key" -CAcreateserial \
      -CAserial "$pki/ca.srl" -days 3650 -out "$pki/$1.crt" -extfile <(printf '%b' "$3") 2>/dev/null
  }
  local client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  # RBAC's bootstrap policy has roles for these users; the kubelet's is bound below (no Node authorizer).
  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  sign kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  sign kube-scheduler "/CN=system:kube-scheduler" "$client"
  sign kubelet-serving "/CN=$NODE_NAME" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
  echo "$ca_sum" >"$pki/.done"
}

write_kubeconfig() { # NAME: $D/NAME.kubeconfig with the NAME client cert
  local f="$D/$1.kubeconfig" kc=(kubectl config --kubeconfig "$D/$1.kubeconfig")
  rm -f "$f"
  "${kc[@]}" set-cluster bed --server "$server" --certificate-authority "$cpki/ca.crt" --embed-certs >/dev/null
  "${kc[@]}" set-credentials "$1" --client-certificate "$pki/$1.crt" --client-key "$pki/$1.key" --embed-certs >/dev/null
  "${kc[@]}" set-context bed --cluster bed --user "$1" >/dev/null
  "${kc[@]}" use-context bed >/dev/null
  chmod 600 "$f"
}

write_configs() {
  mkdir -p "$D/containerd" "$D/cni/net.d" "$D/cni/networks" "$D/kubelet" "$D/pod-logs" "$D/volume-plugins"
  cat >"$D/containerd/config.toml" <<TOML
# Written by hack/node.sh: this containerd keeps everything under $D/containerd
# (but shim sockets: /run/containerd/s/<hash>, a path containerd does not let us set).
version = 4
root = "$D/containerd/root"
state = "$D/containerd/state"
imports = []

[debug]
  level = "info"

[plugins."io.containerd.server.v1.grpc"]
  address = "$sock"
[plugins."io.containerd.server.v1.ttrpc"]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/containerd/opt"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # The machine's bounding set lacks CAP_SYS_RESOURCE: lowering oom_score_adj (the kubelet asks -998 for
  # sandboxes, -997 for Guaranteed pods) fails in runc init ("failed to update /proc/self/oom_score_adj:
  # Permission denied"). Clamp to containerd's own value instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$D/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$D/cni/net.d"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
TOML
  # No default route in the pods (isGateway without isDefaultGateway): pod traffic reaches the
  # bridge, the other pods, and the host end, which also serves the Service CIDR (hostfwd). No ipMasq.
  cat >"$D/cni/net.d/10-bed.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "bed",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$D/cni/networks",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$NODE_SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  cat >"$D/kubelet-config.yaml" <<YAML
# Written by hack/node.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1, which kubelet >= 1.35 refuses unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$sock
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $cpki/ca.crt}
authorization:
  mode: Webhook
podLogsDir: $D/pod-logs
volumePluginDir: $D/volume-plugins
resolvConf: /etc/resolv.conf
failSwapOn: false
maxPods: 50
# The bed's disk is shared with everything else on the machine: do not evict for it.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
}

start() { # NAME ARGS...: detached, own session; log and pid in $D
  local name="$1"; shift
  PATH="$bin:$PATH" setsid nohup "$bin/$name" "$@" >"$D/$name.log" 2>&1 </dev/null &
  echo $! >"$D/$name.pid"
}

fail_with_log() {
  say "$1; last 30 lines of $D/$2.log:"
  tail -n 30 "$D/$2.log" >&2 || true
  cmd_down >&2
  exit 1
}

node_ready() {
  [[ "$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

wait_for() { # NAME TIMEOUT CHECK...: until CHECK succeeds, failing if NAME's process dies
  local name="$1" timeout="$2" deadline=$((SECONDS + $2))
  shift 2
  until "$@"; do
    live_pid "$name" >/dev/null || fail_with_log "$name exited" "$name"
    ((SECONDS < deadline)) || fail_with_log "$name: '$*' not true after ${timeout}s" "$name"
    sleep 0.5
  done
}

# IMAGE-REF TAR FILE=DEST...: (re)write the tar when missing or its binaries changed, then import.
make_image() {
  local ref="$1" tar="$2" user="$3" entry="$4"
  shift 4
  local sum
  sum="$(cat "$bin/.stamp-images" <(echo "$ref $user $entry $*") | sha256sum | cut -d' ' -f1)"
  if [[ ! -f "$tar" || "$(cat "$tar.sum" 2>/dev/null)" != "$sum" ]]; then
    "$bin/mkimage" -ref "$ref" -out "$tar" -user "$user" -entrypoint "$entry" "$@"
    echo "$sum" >"$tar.sum"
  fi
  ctr_ images import "$tar" >/dev/null
}

cmd_up() {
  local t0=$SECONDS
  if [[ ! -f "$cpki/ca.key" ]] || ! k get --raw /readyz >/dev/null 2>&1; then
    die "the bed is not up (no $cpki/ca.key or $server not ready): run hack/bed.sh up first (same env)"
  fi
  mkdir -p "$D"
  install_packages
  "$ROOT/tests/cluster/node/build.sh" || die "node build failed"
  local tb=$SECONDS

  if all_running && node_ready; then
    say "already up ($NODE_NAME Ready)"
    write_env
    return 0
  fi
  stop_processes >/dev/null

  local var port
  for var in KUBELET_PORT KUBELET_HEALTHZ_PORT KCM_PORT SCHEDULER_PORT; do
    port="${!var}"
    port_in_use "$port" && die "port $port is in use by another process; set $var to a free port"
  done

  gen_pki
  local c
  for c in kubelet kube-controller-manager kube-scheduler; do write_kubeconfig "$c"; done
  write_configs

  # The host end of the pod network, before the kubelet (its --node-ip must exist).
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
  ip addr show dev "$NODE_BRIDGE" | grep -qF " $NODE_IP/" ||
    ip addr add "$NODE_IP/${NODE_POD_CIDR#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route show type blackhole | grep -qF "$NODE_SERVICE_CIDR" || ip route add blackhole "$NODE_SERVICE_CIDR"
  modprobe br_netfilter 2>/dev/null || true
  start_hostfwd

  start containerd --config "$D/containerd/config.toml"
  wait_for containerd 60 containerd_up
  make_image "$PAUSE_IMAGE" "$D/pause.tar" 65535:65535 /pause "$bin/pause=/pause"
  make_image "$TEST_IMAGE" "$D/tokencheck.tar" 65532:65532 /tokencheck "$bin/tokencheck=/tokencheck"

  # The kubelet's user (group system:nodes) gets RBAC's system:node role: this bed's apiserver
  # authorizes with RBAC only (no Node authorizer, no NodeRestriction).
  k apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "bed:node:$NODE_NAME"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:node:$NODE_NAME"}
YAML

  for c in kube-controller-manager kube-scheduler; do
    # --authentication-skip-lookup + --client-ca-file: the bed's apiserver has no requestheader CA,
    # and looking it up in extension-apiserver-authentication logs an error every few seconds.
    local common=(--kubeconfig "$D/$c.kubeconfig" --authentication-kubeconfig "$D/$c.kubeconfig"
      --authentication-skip-lookup=true --client-ca-file "$cpki/ca.crt"
      --authorization-kubeconfig "$D/$c.kubeconfig" --bind-address 127.0.0.1 --leader-elect=false
      --cert-dir "$D/$c-certs")
    if [[ "$c" == kube-controller-manager ]]; then
      start "$c" "${common[@]}" --secure-port "$KCM_PORT" \
        --use-service-account-credentials=true \
        --service-account-private-key-file "$cpki/sa.key" --root-ca-file "$cpki/ca.crt" \
        --cluster-signing-cert-file "$cpki/ca.crt" --cluster-signing-key-file "$cpki/ca.key" \
        --service-cluster-ip-range "$NODE_SERVICE_CIDR" --allocate-node-cidrs=false \
        --controllers='*,-bootstrapsigner,-tokencleaner' --profiling=false
    else
      start "$c" "${common[@]}" --secure-port "$SCHEDULER_PORT" --profiling=false
    fi
  done

  start kubelet --config "$D/kubelet-config.yaml" --kubeconfig "$D/kubelet.kubeconfig" \
    --root-dir "$D/kubelet" --cert-dir "$D/kubelet/pki" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --v=1
  local ts=$SECONDS
  wait_for kube-controller-manager 120 healthz "$KCM_PORT"
  wait_for kube-scheduler 120 healthz "$SCHEDULER_PORT"
  wait_for kubelet 180 node_ready
  write_env
  say "up: node $NODE_NAME Ready $((SECONDS - t0))s after start (build/install $((tb - t0))s, processes to Ready $((SECONDS - ts))s)"
  say "logs: $D/*.log; pods' logs: $D/pod-logs; images: $PAUSE_IMAGE, $TEST_IMAGE"
}

containerd_up() { ctr_ version >/dev/null 2>&1; }

hostfwd_pid() { pid_from_file "$D/hostfwd.pid" "$ROOT/tests/cluster/node/hostfwd.py"; }

# The `kubernetes` Service's ClusterIP (an address on the bridge; local beats the blackhole route)
# and $NODE_IP's host ports, forwarded to loopback by hostfwd.py (see the top of this file).
start_hostfwd() {
  local svc_ip svc_port p maps=()
  svc_ip="$(k get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')" || die "no Service default/kubernetes"
  svc_port="$(k get service kubernetes -n default -o jsonpath='{.spec.ports[0].port}')"
  ip addr show dev "$NODE_BRIDGE" | grep -qF " $svc_ip/32" || ip addr add "$svc_ip/32" dev "$NODE_BRIDGE"
  openssl x509 -in "$cpki/apiserver.crt" -noout -ext subjectAltName 2>/dev/null | grep -qF "IP Address:$svc_ip" ||
    say "WARNING: the apiserver's certificate does not name $svc_ip: pods cannot verify it; restart the bed (make down; make up) to re-sign it"
  maps+=("$svc_ip:$svc_port=127.0.0.1:$APISERVER_PORT")
  for p in $NODE_HOST_PORTS; do maps+=("$NODE_IP:$p=127.0.0.1:$p"); done
  setsid nohup python3 "$ROOT/tests/cluster/node/hostfwd.py" "${maps[@]}" >"$D/hostfwd.log" 2>&1 </dev/null &
  echo $! >"$D/hostfwd.pid"
  wait_for hostfwd 20 grep -q '^hostfwd: ready' "$D/hostfwd.log"
  KUBERNETES_SERVICE_ADDR="$svc_ip:$svc_port"
}

healthz() { [[ "$(curl -sk --max-time 3 "https://127.0.0.1:$1/healthz" 2>/dev/null)" == ok ]]; }

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do live_pid "$c" >/dev/null || return 1; done
}

write_env() {
  cat >"$envfile" <<ENV
export NODE_NAME=$NODE_NAME
export CONTAINERD_ADDRESS=$sock
export CONTAINERD_NAMESPACE=k8s.io
export NODE_IMAGES="$PAUSE_IMAGE $TEST_IMAGE"
export NODE_IP=$NODE_IP
export NODE_HOST_PORTS="$NODE_HOST_PORTS"
export NODE_KUBERNETES_SERVICE=${KUBERNETES_SERVICE_ADDR:-$(k get service kubernetes -n default -o go-template='{{.spec.clusterIP}}:{{(index .spec.ports 0).port}}' 2>/dev/null)}
ENV
}

# Pod sandboxes whose shims outlive containerd: kill them by the shim.pid containerd recorded.
stop_shims() {
  local f pid pids=()
  for f in "$D"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    [[ -f "$f" ]] || continue
    pid="$(pid_from_file "$f" "$sock")" && pids+=("$pid")
  done
  if ((${#pids[@]})); then
    stop_pid "${pids[@]}"
    say "stopped ${#pids[@]} containerd shims"
  fi
}

stop_processes() {
  local i name pid
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    name="${COMPONENTS[i]}"
    if [[ "$name" == containerd ]] && pid="$(live_pid containerd)"; then
      # Containers first, while containerd still answers: kill their tasks (the shims exit with them).
      local t
      for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
      sleep 1
    fi
    if pid="$(live_pid "$name")"; then
      stop_pid "$pid"
      say "stopped $name (pid $pid)"
    fi
    rm -f "$D/$name.pid"
  done
  stop_shims
}

cmd_down() {
  # Let the kubelet tear pods down through CNI while it still runs: cordon, then delete its pods.
  if live_pid kubelet >/dev/null && k get node "$NODE_NAME" >/dev/null 2>&1; then
    k cordon "$NODE_NAME" >/dev/null 2>&1 || true
    k delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --wait=true --timeout=60s >/dev/null 2>&1 || true
    k delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  fi
  stop_processes
  # Mounts under our tree (pods' volumes, container rootfs, netns), deepest first.
  if [[ -d "$D" ]]; then
    local m
    findmnt -rn -o TARGET | awk -v d="$D/" 'index($0, d) == 1' | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  fi
  # Empty cgroups the kubelet made (cgroup v1: one tree per controller).
  local cg
  for cg in /sys/fs/cgroup/*/kubepods; do
    if [[ -d "$cg" ]]; then find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  # containerd's shim socket dir, if empty (it is host-wide; another containerd may use it).
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && ip link del "$NODE_BRIDGE"
  ip route show type blackhole | grep -qF "$NODE_SERVICE_CIDR" && ip route del blackhole "$NODE_SERVICE_CIDR"
  rm -f "$envfile"
  return 0
}

cmd_status() {
  local c pid ok=0
  for c in "${COMPONENTS[@]}"; do
    if pid="$(live_pid "$c")"; then echo "$c: up (pid $pid)"; else echo "$c: down"; ok=1; fi
  done
  if node_ready; then echo "node $NODE_NAME: Ready"; else echo "node $NODE_NAME: not Ready"; ok=1; fi
  return $ok
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) [[ -f "$envfile" ]] || die "not up: run hack/node.sh up"; cat "$envfile" ;;
  load-image) [[ -f "${2:-}" ]] || die "usage: $0 load-image TAR"; ctr_ images import "$2" ;;
  ctr) shift; ctr_ "$@" ;;
  *) echo "usage: $0 up|down|status|env|load-image TAR|ctr ARGS..." >&2; exit 2 ;;
esac
