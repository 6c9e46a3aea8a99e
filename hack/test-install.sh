#!/usr/bin/env bash
# `make test-install`: the Helm chart installed on the bed's real node (hack/node.sh), checked by what
# it does. On a machine that has never seen the repository it brings up the bed (and takes it down at
# the end if it started it, as hack/test.sh does) and the node (likewise), builds what is missing in
# parallel (the bed's and the node's binaries, helm, the image; the release binary only if there is
# none), loads the image into the node's containerd, then:
#   1. helm install: the pods turn Ready through their own probes (kubectl rollout status);
#   2. an Ec2Instance reaches Ready=True and its instance is in LocalStack: the pod used its
#      ServiceAccount's token under the chart's RBAC (no other binding) and reached EC2;
#   3. helm upgrade changes a value: a new ReplicaSet rolls out, its pods Ready;
#   4. 2 replicas, leader election: the Lease holder's pod is deleted, the other takes the Lease, a
#      new object reaches Ready, and each object has exactly one instance (owner tag k106.com/owner-uid);
#   5. an object deleted while the operator runs takes its instance with it; helm uninstall leaves
#      the CRD, the other object (finalizer and all) and its instance; cleaned up then as a user would
#      be told (chart NOTES): terminate the instance, remove the finalizer.
# Prints each step's time. Exit status non-zero on the first failed check.
#
# Networking (how the pods reach the apiserver and EC2, which listen on 127.0.0.1 only): the pods stay
# on the node's CNI bridge, and hack/node.sh forwards the `kubernetes` Service's ClusterIP
# (10.96.0.1:443, the address the kubelet injects as KUBERNETES_SERVICE_HOST/PORT) and the EC2
# ports on the bridge's host address ($NODE_IP) to loopback (tests/cluster/node/hostfwd.py, kube-proxy's
# one job here). So the chart runs as it would anywhere: its own in-cluster config, no hostNetwork,
# no env override; each replica has its own network namespace, so two replicas do not fight over the
# admin port and the kubelet probes each pod's IP. Chosen over hostNetwork, which would change what is
# tested (host ports, a second replica unschedulable on one node) and need the chart to carry a
# bed-only setting.
#
# Env: BED_CACHE and the bed's ports (as hack/bed.sh), NODE_* (as hack/node.sh),
#      INSTALL_NAMESPACE (ec2-operator-install: the release's), INSTALL_TEST_NAMESPACE (ec2-install-test:
#      the objects'), KEEP=1 (leave the release, the node and the bed up at the end, for a look).
set -euo pipefail
shopt -s inherit_errexit

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"
cd "$ROOT"
export BED_CACHE="${BED_CACHE:-$ROOT/.cache}"
NS="${INSTALL_NAMESPACE:-ec2-operator-install}"
OBJ_NS="${INSTALL_TEST_NAMESPACE:-ec2-install-test}"
RELEASE=ec2-operator
CHART="$ROOT/deploy/helm/ec2-operator"
IMAGE=localhost/ec2-operator
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
FINALIZER=k106.com/terminate-instance
OWNER_TAG=k106.com/owner-uid
LOGS="$BED_CACHE/bed/test-install"
HELM="$ROOT/.cache/bin/helm"

T0=$EPOCHREALTIME
STEP_NAMES=()
STEP_SECS=()
step_t0=""
step_name=""
secs() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "test-install: $*" >&2; }
fail() {
  echo "test-install: FAILED${step_name:+ in \"$step_name\"}: $*" >&2
  exit 1
}
step() { # NAME: ends the current step (recording its time) and starts the next one
  end_step
  step_name="$1"
  step_t0=$EPOCHREALTIME
  echo "== $step_name" >&2
}
end_step() {
  [[ -n "$step_name" ]] || return 0
  local s
  s="$(secs "$step_t0")"
  STEP_NAMES+=("$step_name")
  STEP_SECS+=("$s")
  echo "   ($step_name: ${s}s)" >&2
  step_name=""
}

lap() { echo "[+$(secs "$step_t0")s]"; } # time since the step began
k() { kubectl --request-timeout=20s "$@"; }
helm_() { "$HELM" "$@"; }
aws_() { "$BED_CACHE/localstack-venv/bin/aws" "$@"; }

# --- background jobs: name -> pid; log and time in $LOGS ---------------------------------------------
declare -A JOBS=()
job() { # NAME CMD...: in its own process group (set -m), so a failed run can stop all of it
  local name="$1"
  shift
  set -m
  (
    t="$EPOCHREALTIME"
    rc=0
    "$@" >"$LOGS/$name.log" 2>&1 </dev/null || rc=$?
    secs "$t" >"$LOGS/$name.time"
    exit "$rc"
  ) &
  JOBS[$name]=$!
  set +m
}
wait_job() { # NAME: its exit status, with the end of its log when it failed
  local name="$1" rc=0
  wait "${JOBS[$name]}" || rc=$?
  unset "JOBS[$name]"
  if [[ "$rc" != 0 ]]; then
    say "$name failed (exit $rc); last lines of $LOGS/$name.log:"
    tail -n 30 "$LOGS/$name.log" >&2
    fail "$name failed"
  fi
  echo "   $name: done in $(cat "$LOGS/$name.time")s" >&2
}

# The image: reused when podman has it; else made from the release binary as it is when there is one
# (CARGO_BUILD=0: not relinked under whatever may be running it), else `make image` (which builds
# the release binary). Then saved as a tar for the node.
image_job() {
  if hack/image.sh podman image exists "$IMAGE:$VERSION"; then
    local rev head
    rev="$(hack/image.sh podman image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$IMAGE:$VERSION")"
    head="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "image: reusing $IMAGE:$VERSION (revision $rev)"
    [[ "$rev" == "$head" ]] || echo "image: NOTE: built from $rev, HEAD is $head: \`make image\` to rebuild it"
  elif [[ -x target/release/ec2-operator ]]; then
    echo "image: building $IMAGE:$VERSION from target/release/ec2-operator as it is"
    CARGO_BUILD=0 hack/image.sh build
  else
    echo "image: no release binary: make image"
    hack/image.sh build
  fi
  hack/image.sh save
}

# --- EC2 (LocalStack directly, the bed's view) --------------------------------------------------------
live_instances() { # OWNER-UID: ids of its instances that are not terminated or shutting down
  aws_ ec2 describe-instances --output text --query 'Reservations[].Instances[].InstanceId' \
    --filters "Name=tag:$OWNER_TAG,Values=$1" "Name=instance-state-name,Values=pending,running,stopping,stopped" |
    tr -s '[:space:]' '\n' | sed '/^$/d' | sort
}
instance_state() { # ID
  aws_ ec2 describe-instances --instance-ids "$1" --output text --query 'Reservations[0].Instances[0].State.Name'
}
uid_of() { k -n "$OBJ_NS" get ec2i "$1" -o jsonpath='{.metadata.uid}'; }

# OBJECT: exactly one live instance, the one its status names.
one_instance() {
  local uid ids id
  uid="$(uid_of "$1")"
  id="$(k -n "$OBJ_NS" get ec2i "$1" -o jsonpath='{.status.instanceId}')"
  ids="$(live_instances "$uid")"
  [[ "$(wc -l <<<"$ids")" == 1 && "$ids" == "$id" ]] ||
    fail "ec2i/$1 (uid $uid, status.instanceId '$id'): instances tagged $OWNER_TAG=$uid in LocalStack: [$(xargs <<<"$ids")], want exactly [$id]"
  echo "   ec2i/$1: exactly one instance, $id ($(instance_state "$id")), tagged $OWNER_TAG=$uid" >&2
}

wait_ready_object() { # NAME: Ready=True within 3 minutes
  local t
  t=$EPOCHREALTIME
  k -n "$OBJ_NS" wait --for=condition=Ready=True "ec2i/$1" --timeout=180s >/dev/null ||
    fail "ec2i/$1 not Ready: $(k -n "$OBJ_NS" get ec2i "$1" -o jsonpath='{.status.conditions}')"
  echo "   ec2i/$1 Ready $(secs "$t")s after the wait began: $(k -n "$OBJ_NS" get ec2i "$1" --no-headers | tr -s ' ')" >&2
}

apply_object() { # NAME: a small Ec2Instance in $OBJ_NS
  k apply -f - >/dev/null <<YAML
apiVersion: k106.com/v1alpha1
kind: Ec2Instance
metadata: {name: $1, namespace: $OBJ_NS}
spec:
  imageId: ami-760aaa0f
  instanceType: t3.micro
  tags: {Name: $1, test: install}
YAML
}

deploy_pods() { # pods of the release that are not being deleted
  k -n "$NS" get pods -l "app.kubernetes.io/instance=$RELEASE" -o go-template \
    --template '{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}'
}
lease_holder() { k -n "$NS" get lease "$RELEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true; }
current_rs() { # the Deployment's ReplicaSet of its current revision
  local rev
  rev="$(k -n "$NS" get deploy "$RELEASE" -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')"
  k -n "$NS" get rs -l "app.kubernetes.io/instance=$RELEASE" -o go-template --template \
    "{{range .items}}{{if eq (index .metadata.annotations \"deployment.kubernetes.io/revision\") \"$rev\"}}{{.metadata.name}}{{end}}{{end}}"
}
rollout() {
  k -n "$NS" rollout status "deploy/$RELEASE" --timeout=180s >&2 || fail "deploy/$RELEASE did not roll out"
}

# Objects left in $OBJ_NS, with no operator to run their finalizer: what the chart's NOTES tell a
# user: terminate each object's instance (found by its owner tag), then remove the finalizer.
release_objects() {
  local name uid id
  for name in $(k -n "$OBJ_NS" get ec2i -o name 2>/dev/null); do
    name="${name#*/}"
    uid="$(uid_of "$name")"
    for id in $(live_instances "$uid"); do
      aws_ ec2 terminate-instances --instance-ids "$id" >/dev/null
      echo "   terminated $id (ec2i/$name's)" >&2
    done
    k -n "$OBJ_NS" patch ec2i "$name" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null
  done
}

diagnose() {
  say "state at the failure:"
  {
    k -n "$NS" get deploy,rs,pods,lease -o wide 2>&1 || true
    k get ec2i -A -o wide 2>&1 || true
    local p
    for p in $(k -n "$NS" get pods -o name 2>/dev/null); do
      echo "--- logs of $p (last 20 lines)"
      k -n "$NS" logs "$p" --tail=20 2>&1 || true
    done
    echo "--- events in $NS"
    k -n "$NS" get events --sort-by=.lastTimestamp 2>&1 | tail -n 20 || true
    echo "--- events in $OBJ_NS"
    k -n "$OBJ_NS" get events --sort-by=.lastTimestamp 2>&1 | tail -n 10 || true
  } >&2
}

started_bed=0
started_node=0
cleanup() {
  local rc=$?
  set +e
  trap - EXIT
  local name
  # Jobs still running (a build): their process groups. The bed's servers run in sessions of their
  # own (setsid) and are stopped by hack/bed.sh down.
  for name in "${!JOBS[@]}"; do kill -TERM -- "-${JOBS[$name]}" 2>/dev/null; done
  if [[ "$rc" != 0 && -n "${KUBECONFIG:-}" ]]; then diagnose; fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    say "KEEP=1: leaving the release ($NS), the objects ($OBJ_NS), the node and the bed up"
    exit "$rc"
  fi
  if [[ "$rc" != 0 && "$started_bed" == 0 && -n "${KUBECONFIG:-}" ]]; then
    # The bed stays up: leave it as we found it.
    say "cleaning up the release and the test objects"
    [[ -x "$HELM" ]] && helm_ uninstall "$RELEASE" -n "$NS" --wait --timeout 90s >/dev/null 2>&1
    release_objects
    k delete namespace "$OBJ_NS" "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1
  fi
  if [[ "$started_node" == 1 ]]; then hack/node.sh down >/dev/null 2>&1 || say "hack/node.sh down failed"; fi
  if [[ "$started_bed" == 1 ]]; then hack/bed.sh down >/dev/null 2>&1 || say "hack/bed.sh down failed"; fi
  if [[ "$rc" == 0 ]]; then
    echo "test-install: all passed in $(secs "$T0")s" >&2
  else
    echo "test-install: FAILED after $(secs "$T0")s (logs: $LOGS)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT

mkdir -p "$LOGS"
command -v kubectl >/dev/null || die "kubectl is needed on PATH"

# --- 0. build and bring up, in parallel --------------------------------------------------------------
step "prepare: bed, node binaries, helm, image (in parallel)"
if hack/bed.sh status >/dev/null 2>&1; then
  say "reusing the running bed"
  # The demo operator watches every namespace and would reconcile this test's objects too.
  hack/bed.sh stop-operator
else
  started_bed=1
  job bed hack/bed.sh up
fi
job node-build tests/cluster/node/build.sh
job helm hack/helm.sh install
job image image_job
[[ "$started_bed" == 0 ]] || wait_job bed
wait_job node-build
eval "$(hack/bed.sh env)"

step "node up"
if hack/node.sh status >/dev/null 2>&1; then
  say "reusing the running node"
else
  started_node=1
fi
hack/node.sh up
eval "$(hack/node.sh env)"
# Through the forwarded ClusterIP, as a pod will, with the bed's CA: the certificate must name it.
ready="$(curl -sS --max-time 10 --cacert "$BED_CACHE/bed/cluster/pki/ca.crt" "https://$NODE_KUBERNETES_SERVICE/readyz" 2>&1)" ||
  fail "the apiserver at the kubernetes Service $NODE_KUBERNETES_SERVICE: $ready (a bed started before its certificate named the ClusterIP: make down; make up)"
echo "   apiserver through the Service $NODE_KUBERNETES_SERVICE: readyz $ready" >&2
# The pods' EC2: the strict EC2 when the node forwards it (it is the one the tests use), else LocalStack.
ec2_endpoint=""
for port in "${STRICT_EC2_ENDPOINT##*:}" "${AWS_ENDPOINT_URL##*:}"; do
  if [[ " $NODE_HOST_PORTS " == *" $port "* ]] && curl -s -o /dev/null --max-time 5 "http://$NODE_IP:$port/"; then
    ec2_endpoint="http://$NODE_IP:$port"
    break
  fi
done
[[ -n "$ec2_endpoint" ]] || fail "neither EC2 endpoint ($STRICT_EC2_ENDPOINT, $AWS_ENDPOINT_URL) answers at $NODE_IP (NODE_HOST_PORTS=$NODE_HOST_PORTS)"
echo "   pods' EC2 endpoint: $ec2_endpoint" >&2

step "load the image into the node"
wait_job helm
wait_job image
grep -E '^image: (reusing|NOTE|building|no release)' "$LOGS/image.log" | sed 's/^/   /' >&2 || true
hack/node.sh load-image "$ROOT/.cache/image/ec2-operator.tar" >/dev/null 2>&1 || fail "ctr images import failed"
hack/node.sh ctr images ls -q 2>/dev/null | grep -qxF "$IMAGE:$VERSION" || fail "$IMAGE:$VERSION not in the node's containerd"
echo "   $IMAGE:$VERSION in the node's containerd" >&2

# Leftovers of an interrupted run on a bed that stayed up.
if helm_ status "$RELEASE" -n "$NS" >/dev/null 2>&1 || k get namespace "$OBJ_NS" >/dev/null 2>&1; then
  say "removing the leftovers of an earlier run"
  helm_ uninstall "$RELEASE" -n "$NS" --wait --timeout 90s >/dev/null 2>&1 || true
  release_objects
  k delete namespace "$OBJ_NS" "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
fi

# --- 1. install ----------------------------------------------------------------------------------------
step "1. helm install, pods Ready through their probes"
cat >"$LOGS/values.yaml" <<YAML
# Written by hack/test-install.sh: the chart's values for the bed.
image: {repository: $IMAGE, tag: "$VERSION", pullPolicy: Never}
region: us-east-1
endpointUrl: $ec2_endpoint
# LocalStack's test keys (credentials are for LocalStack and tests only).
credentials: {accessKeyId: test, secretAccessKey: test}
YAML
helm_ install "$RELEASE" "$CHART" -n "$NS" --create-namespace -f "$LOGS/values.yaml" >"$LOGS/helm-install.log" ||
  fail "helm install failed: $(cat "$LOGS/helm-install.log")"
rollout
rs1="$(current_rs)"
replicas="$(k -n "$NS" get deploy "$RELEASE" -o jsonpath='{.status.readyReplicas}/{.spec.replicas}')"
[[ "$replicas" == 2/2 ]] || fail "deploy/$RELEASE has $replicas replicas ready, want 2/2"
echo "   deploy/$RELEASE: $replicas Ready (ReplicaSet $rs1); readiness probe: $(k -n "$NS" get deploy "$RELEASE" \
  -o jsonpath='{.spec.template.spec.containers[0].readinessProbe.httpGet.path} on port {.spec.template.spec.containers[0].readinessProbe.httpGet.port}')" >&2
k -n "$NS" get pods -o wide >&2

# --- 2. reconcile --------------------------------------------------------------------------------------
step "2. an Ec2Instance (examples/web.yaml) reconciled to Ready, its instance in LocalStack"
sa="system:serviceaccount:$NS:$(k -n "$NS" get deploy "$RELEASE" -o jsonpath='{.spec.template.spec.serviceAccountName}')"
bindings="$(k get clusterrolebindings,rolebindings -A -o go-template --template \
  '{{range .items}}{{range .subjects}}{{if and (eq .kind "ServiceAccount") (eq .name "'"${sa##*:}"'")}}{{.namespace}}{{"\n"}}{{end}}{{end}}{{end}}' | grep -cxF "$NS" || true)"
echo "   $sa: $bindings bindings (the chart's); can-i patch ec2instances: $(k auth can-i patch ec2instances.k106.com --as "$sa" -A 2>&1)," \
  "list secrets: $(k auth can-i list secrets --as "$sa" -A 2>&1)" >&2
k create namespace "$OBJ_NS" >/dev/null
sed "s/^  namespace: default$/  namespace: $OBJ_NS/" examples/web.yaml | k apply -f - >/dev/null
wait_ready_object web
one_instance web
# The pods' watches go through the Service's ClusterIP (the kubelet's KUBERNETES_SERVICE_HOST).
peers="$(ss -Htn state established src "${NODE_KUBERNETES_SERVICE%:*}" 2>/dev/null | awk '{print $4}' | sed 's/:[0-9]*$//' | sort -u | xargs)"
pod_ips="$(k -n "$NS" get pods -o jsonpath='{.items[*].status.podIP}')"
echo "   connections to the apiserver through $NODE_KUBERNETES_SERVICE from: ${peers:-none} (pod IPs: $pod_ips)" >&2
for ip in $pod_ips; do [[ " $peers " == *" $ip "* ]] || fail "no connection from pod $ip through $NODE_KUBERNETES_SERVICE"; done

# --- 3. upgrade ----------------------------------------------------------------------------------------
step "3. helm upgrade (pollIntervalSeconds 30 -> 20) rolls the Deployment"
helm_ upgrade "$RELEASE" "$CHART" -n "$NS" --reuse-values --set pollIntervalSeconds=20 >"$LOGS/helm-upgrade.log" ||
  fail "helm upgrade failed: $(cat "$LOGS/helm-upgrade.log")"
rollout
rs2="$(current_rs)"
[[ -n "$rs2" && "$rs2" != "$rs1" ]] || fail "no new ReplicaSet (before: $rs1, now: $rs2)"
poll="$(k -n "$NS" get rs "$rs2" -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="POLL_INTERVAL_SECONDS")].value}')"
[[ "$poll" == 20 ]] || fail "ReplicaSet $rs2 has POLL_INTERVAL_SECONDS=$poll, want 20"
old="$(k -n "$NS" get rs "$rs1" -o jsonpath='{.spec.replicas}')"
[[ "$old" == 0 ]] || fail "old ReplicaSet $rs1 still has $old replicas"
for p in $(deploy_pods); do
  [[ "$(k -n "$NS" get pod "$p" -o jsonpath='{.metadata.ownerReferences[0].name}')" == "$rs2" ]] ||
    fail "pod $p is not of the new ReplicaSet $rs2"
done
echo "   ReplicaSet $rs1 -> $rs2 (POLL_INTERVAL_SECONDS=20), $(k -n "$NS" get deploy "$RELEASE" -o jsonpath='{.status.readyReplicas}') pods Ready: $(deploy_pods | xargs)" >&2

# --- 4. leader failover --------------------------------------------------------------------------------
step "4. delete the leader pod: the other replica takes the Lease, no duplicate instance"
# The holder is "<pod name>-<pid>": wait for a holder among the current pods (the rollout moved it).
deadline=$((SECONDS + 90))
leader=""
first_holder="$(lease_holder)"
until [[ -n "$leader" ]]; do
  holder="$(lease_holder)"
  for p in $(deploy_pods); do [[ "$holder" == "$p-"* ]] && leader="$p"; done
  [[ -n "$leader" ]] && break
  ((SECONDS < deadline)) || fail "Lease $NS/$RELEASE held by '$holder', not by a current pod ($(deploy_pods | xargs))"
  sleep 0.5
done
standby="$(deploy_pods | grep -vxF "$leader" | head -n1)"
[[ "$first_holder" == "$holder" ]] ||
  echo "   $(lap) the Lease went from '$first_holder' (free, or a pod of the old ReplicaSet) to a current pod" >&2
echo "   $(lap) Lease $NS/$RELEASE held by $holder: leader $leader, standby $standby" >&2
t=$EPOCHREALTIME
k -n "$NS" delete pod "$leader" --wait=false >/dev/null
deadline=$((SECONDS + 90))
while :; do
  holder="$(lease_holder)"
  [[ -n "$holder" && "$holder" != "$leader-"* ]] && break
  ((SECONDS < deadline)) || fail "the Lease is still '$holder' 90s after the leader pod's deletion"
  sleep 0.2
done
echo "   $(lap) Lease taken by $holder $(secs "$t")s after the leader's deletion" >&2
[[ "$holder" == "$standby-"* ]] || echo "   (not the standby $standby: its replacement took it)" >&2
apply_object web-2
wait_ready_object web-2
one_instance web-2
one_instance web
total="$(aws_ ec2 describe-instances --output text --query 'length(Reservations[].Instances[])' \
  --filters "Name=tag:k106.com/namespace,Values=$OBJ_NS" "Name=instance-state-name,Values=pending,running,stopping,stopped")"
[[ "$total" == 2 ]] || fail "$total live instances tagged k106.com/namespace=$OBJ_NS, want 2"
echo "   $total live instances for the namespace's 2 objects" >&2
rollout
echo "   $(lap) deploy/$RELEASE back to $(k -n "$NS" get deploy "$RELEASE" -o jsonpath='{.status.readyReplicas}') Ready" >&2

# --- 5. delete, uninstall, clean up --------------------------------------------------------------------
step "5. helm uninstall leaves the CRD, the objects and their instances; then clean up"
# With the operator running, deleting an object terminates its instance (deletionPolicy Delete).
id2="$(k -n "$OBJ_NS" get ec2i web-2 -o jsonpath='{.status.instanceId}')"
k -n "$OBJ_NS" delete ec2i web-2 --timeout=120s >/dev/null || fail "ec2i/web-2 not deleted within 120s"
echo "   $(lap) ec2i/web-2 deleted by the operator: its instance $id2 is $(instance_state "$id2")" >&2
id1="$(k -n "$OBJ_NS" get ec2i web -o jsonpath='{.status.instanceId}')"
helm_ uninstall "$RELEASE" -n "$NS" --wait --timeout 120s >"$LOGS/helm-uninstall.log" ||
  fail "helm uninstall failed: $(cat "$LOGS/helm-uninstall.log")"
echo "   $(lap) helm uninstall done; waiting for the pods to end" >&2
t=$EPOCHREALTIME
k -n "$NS" wait --for=delete pod -l "app.kubernetes.io/instance=$RELEASE" --timeout=90s >/dev/null 2>&1 || true
ended="$(secs "$t")"
echo "   $(lap) pods ended ${ended}s after the uninstall$(awk -v s="$ended" 'BEGIN { if (s >= 25) print \
  " (~terminationGracePeriodSeconds, 30s: a replica ignored SIGTERM and was killed; the standby installs no handler)" }')" >&2
left="$(deploy_pods | xargs)"
[[ -z "$left" ]] || fail "pods left after helm uninstall: $left"
k get crd ec2instances.k106.com >/dev/null || fail "helm uninstall removed the CRD"
finalizers="$(k -n "$OBJ_NS" get ec2i web -o jsonpath='{.metadata.finalizers}')" || fail "helm uninstall removed ec2i/web"
[[ "$finalizers" == *"$FINALIZER"* ]] || fail "ec2i/web lost its finalizer: $finalizers"
state="$(instance_state "$id1")"
[[ "$state" == running ]] || fail "ec2i/web's instance $id1 is $state after helm uninstall, want running"
echo "   $(lap) after helm uninstall: no pods, CRD kept, ec2i/web kept (finalizers $finalizers), its instance $id1 $state" >&2
# Deleting it now waits on the finalizer, with no operator to run it.
k -n "$OBJ_NS" delete ec2i web --wait=false >/dev/null
sleep 3
[[ -n "$(k -n "$OBJ_NS" get ec2i web -o jsonpath='{.metadata.deletionTimestamp}' 2>/dev/null)" ]] ||
  fail "ec2i/web is gone without its finalizer having run"
echo "   $(lap) kubectl delete ec2i web: Terminating, held by $FINALIZER (no operator)" >&2
release_objects
k -n "$OBJ_NS" wait --for=delete ec2i/web --timeout=30s >/dev/null 2>&1 || fail "ec2i/web not gone after removing its finalizer"
echo "   $(lap) ec2i/web gone once its instance was terminated ($(instance_state "$id1")) and the finalizer removed" >&2
k delete namespace "$OBJ_NS" "$NS" --wait=true --timeout=120s >/dev/null || fail "namespaces $OBJ_NS $NS not deleted"
echo "   $(lap) namespaces $OBJ_NS and $NS deleted" >&2
end_step

echo "== timings" >&2
for i in "${!STEP_NAMES[@]}"; do printf '   %6ss  %s\n' "${STEP_SECS[$i]}" "${STEP_NAMES[$i]}" >&2; done
