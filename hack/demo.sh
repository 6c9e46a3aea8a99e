#!/usr/bin/env bash
# `make demo`: the sandbox (API server + LocalStack), the operator running against it, the
# example applied and shown Ready.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(repo_root)"
cd "$ROOT"
BED="${BED_CACHE:-$ROOT/.cache}/bed"

echo "==> building the operator (the first build takes several minutes)"
make -s build 2>&1 | tail -n 1 &
build=$!
echo "==> starting the sandbox: kube-apiserver + etcd and LocalStack EC2"
hack/bed.sh up
wait "$build"
eval "$(hack/bed.sh env)"

echo "==> installing the CRD"
kubectl apply -f crds/ec2instance.yaml
kubectl wait --for=condition=Established crd/ec2instances.k106.com --timeout=60s

if pid="$(pid_from_file "$BED/operator.pid" ec2-operator)"; then
  echo "==> operator already running (pid $pid)"
else
  echo "==> starting the operator (log: $BED/operator.log)"
  POLL_INTERVAL_SECONDS=10 TRANSITION_INTERVAL_SECONDS=2 \
    setsid nohup target/debug/ec2-operator --admin-addr 127.0.0.1:18080 >"$BED/operator.log" 2>&1 &
  echo $! >"$BED/operator.pid"
fi

echo "==> applying examples/"
kubectl apply -f examples/
kubectl wait --for=condition=Ready ec2instances --all --timeout=180s
kubectl get ec2instances -o wide

cat <<MSG

The sandbox is up and the operator is running.
  eval "\$(hack/bed.sh env)"             # point kubectl and the aws CLI at the sandbox
  kubectl describe ec2i web               # status, conditions and events
  kubectl edit ec2i web                   # change instanceType, desiredState, tags...
  aws ec2 describe-instances --query 'Reservations[].Instances[].[InstanceId,State.Name,InstanceType]'
  curl -s 127.0.0.1:18080/metrics         # operator metrics
  tail -f $BED/operator.log               # operator logs
  make down                               # stop the operator and the sandbox
MSG
