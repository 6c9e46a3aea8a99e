#!/usr/bin/env bash
# `make test-docs` (through hack/test.sh docs, which brings the bed up): the tutorial's commands,
# run on the test bed and checked against the output the documents show (hack/docs_runner.py), the
# English and the Korean one in turn, after checking that both run the same commands.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(repo_root)"
DOCS=(docs/tutorial.md docs/tutorial.ko.md)
NS=tutorial
start=$SECONDS

# Seconds: do the translations run the same commands, do the shown files match the repository?
python3 hack/docs_runner.py --check "${DOCS[@]}"

# hack/test.sh docs has brought the bed up (or reused it, the demo operator stopped: it watches
# every namespace and would manage the tutorial's objects too) and built the operator.
eval "$(hack/bed.sh env)"

# What a run stopped half-way (killed, or a machine that went down) may have left: the tutorial
# starts from no namespace, no objects in it and no Alice CRD. Objects can outlive a namespace
# force-finalized around them, so they are looked for either way. Their operator is gone, so
# finalizers go by hand.
leftovers() {
  local kinds=(ec2instances.k106.com alices.k106.com replicasets events) kind names found=0
  kubectl get namespace "$NS" >/dev/null 2>&1 && found=1
  for kind in "${kinds[@]}"; do
    [ -z "$(kubectl get "$kind" -n "$NS" -o name 2>/dev/null)" ] || found=1
  done
  if [ "$found" = 1 ]; then
    echo "test-docs: removing namespace $NS and the objects an earlier run left in it" >&2
    # Objects in a namespace that is gone can be neither patched nor deleted: bring it back first.
    kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS" >/dev/null
    for kind in "${kinds[@]}"; do
      names="$(kubectl get "$kind" -n "$NS" -o name 2>/dev/null)" || continue
      [ -n "$names" ] || continue
      if [ "$kind" = ec2instances.k106.com ]; then
        for obj in $names; do
          kubectl patch "$obj" -n "$NS" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null
        done
      fi
      # shellcheck disable=SC2086
      kubectl delete $names -n "$NS" --ignore-not-found >/dev/null
    done
    kubectl delete namespace "$NS" --wait=false >/dev/null
    # No kube-controller-manager on the bed: nothing else would remove the namespace's finalizer.
    printf '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"%s"},"spec":{"finalizers":[]}}' "$NS" |
      kubectl replace --raw "/api/v1/namespaces/$NS/finalize" -f - >/dev/null
  fi
  kubectl delete crd alices.k106.com --ignore-not-found >/dev/null
}
leftovers

for doc in "${DOCS[@]}"; do
  python3 hack/docs_runner.py "$doc"
done
echo "test-docs: done in $((SECONDS - start)) s"
