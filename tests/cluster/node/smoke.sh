#!/usr/bin/env bash
# Proves the bed's node (hack/node.sh up) runs workloads, in namespace bed-smoke (deleted at the end):
#   1. a Pod of the locally built image on the CNI bridge turns Ready through its httpGet readiness
#      probe (the kubelet probes the pod's IP), and `kubectl logs` reaches the kubelet;
#   2. a Pod calls the API server with its ServiceAccount's projected token: it lists pods in its
#      namespace, which RBAC refuses (403, not Ready) until a RoleBinding grants it (200, Ready);
#   3. a Deployment of 2 replicas rolls out, then rolls to a new version (kubectl rollout status),
#      and the new pods answer with it.
# Env: as hack/node.sh (BED_CACHE, APISERVER_PORT), SMOKE_HOST_PORT (18080, the hostNetwork pod's).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/../../../hack/lib.sh"
export BED_CACHE="${BED_CACHE:-$(repo_root)/.cache}"
APISERVER_PORT="${APISERVER_PORT:-16443}"
SMOKE_HOST_PORT="${SMOKE_HOST_PORT:-18080}"
eval "$("$here/../../../hack/node.sh" env)"
export KUBECONFIG="$BED_CACHE/bed/kubeconfig"
ns=bed-smoke
img=localhost/bed/tokencheck:1
k() { kubectl -n "$ns" --request-timeout=20s "$@"; }
step() { echo "== $* ($((SECONDS - t0))s)"; }
t0=$SECONDS

kubectl delete namespace "$ns" --ignore-not-found --wait=true --timeout=90s >/dev/null
kubectl create namespace "$ns" >/dev/null
# The namespace's default ServiceAccount comes from kube-controller-manager: pods wait for it.
until k get serviceaccount default >/dev/null 2>&1; do sleep 0.5; done

step "1. pod on the bridge, Ready through its readiness probe"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 65532}
  containers:
  - name: web
    image: $img
    imagePullPolicy: Never
    env: [{name: READY_AFTER, value: 3s}]
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
    livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 5}
    resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 32Mi}}
YAML
k wait --for=condition=Ready pod/web --timeout=120s >/dev/null
ip="$(k get pod web -o jsonpath='{.status.podIP}')"
started="$(k get pod web -o jsonpath='{.status.containerStatuses[0].state.running.startedAt}')"
ready_at="$(k get pod web -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastTransitionTime}')"
echo "pod web Ready: IP $ip, container started $started, Ready $ready_at (READY_AFTER=3s)"
echo "GET http://$ip:8080/readyz from the host: $(curl -s --max-time 3 "http://$ip:8080/readyz")"
echo "kubectl logs web: $(k logs web | head -n 1)"

step "2. pod uses its ServiceAccount token; RBAC refuses, then grants"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader}
rules: [{apiGroups: [""], resources: [pods], verbs: [get, list]}]
---
apiVersion: v1
kind: Pod
metadata: {name: token}
spec:
  serviceAccountName: reader
  # No kube-proxy: the apiserver is reached on the host's loopback (its cert is valid for 127.0.0.1);
  # the container's env overrides the KUBERNETES_SERVICE_* the kubelet injects.
  hostNetwork: true
  securityContext: {runAsNonRoot: true, runAsUser: 65532}
  containers:
  - name: token
    image: $img
    imagePullPolicy: Never
    env:
    - {name: CALL_API, value: "1"}
    - {name: API_PATH, value: /api/v1/namespaces/$ns/pods}
    - {name: KUBERNETES_SERVICE_HOST, value: 127.0.0.1}
    - {name: KUBERNETES_SERVICE_PORT, value: "$APISERVER_PORT"}
    - {name: PORT, value: "$SMOKE_HOST_PORT"}
    - name: LISTEN_HOST
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    readinessProbe: {httpGet: {path: /readyz, port: $SMOKE_HOST_PORT}, periodSeconds: 1}
YAML
until k logs token 2>/dev/null | grep -q ' 403 '; do sleep 1; done
echo "without a RoleBinding: $(k logs token | grep -m1 ' 403 ' | cut -c1-160)"
[[ "$(k get pod token -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == False ]] ||
  die "pod token Ready although RBAC refused its call"
k create rolebinding reader --role pod-reader --serviceaccount "$ns:reader" >/dev/null
k wait --for=condition=Ready pod/token --timeout=60s >/dev/null
echo "with the RoleBinding:    $(k logs token | grep -m1 ' 200 ' | cut -c1-160)"
echo "projected token source: $(k get pod token -o jsonpath='{.spec.volumes[0].projected.sources[0].serviceAccountToken}')"

step "3. Deployment: rollout, then a rolling update to v2"
k apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: rollout}
spec:
  replicas: 2
  selector: {matchLabels: {app: rollout}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}
  template:
    metadata: {labels: {app: rollout}}
    spec:
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532}
      containers:
      - name: app
        image: $img
        imagePullPolicy: Never
        env: [{name: VERSION, value: v1}, {name: READY_AFTER, value: 2s}]
        readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
YAML
k rollout status deploy/rollout --timeout=120s
k set env deploy/rollout VERSION=v2 >/dev/null
k rollout status deploy/rollout --timeout=120s
# The new pods: old ones may still be terminating (phase Running, deletionTimestamp set).
for ip in $(k get pods -l app=rollout --field-selector status.phase=Running -o go-template \
  --template '{{range .items}}{{if not .metadata.deletionTimestamp}}{{.status.podIP}} {{end}}{{end}}'); do
  echo "pod $ip /version: $(curl -s --max-time 3 "http://$ip:8080/version")"
done
k get pods -o wide

step "cleanup"
kubectl delete namespace "$ns" --wait=true --timeout=120s >/dev/null
echo "smoke: all passed in $((SECONDS - t0))s"
