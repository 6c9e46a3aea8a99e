#!/usr/bin/env bash
# `make test`: every test, the test bed included. Brings the bed up if it is not (and then
# takes it down again, even when a test fails); reuses a bed that `make up` started.
# `hack/test.sh chaos` (`make test-chaos`): the chaos test alone, on the same kind of bed.
# `hack/test.sh gitops` (`make test-gitops`): Argo CD (hack/argocd.sh, built here) on the bed,
# syncing Ec2Instance objects from git, and its health checks in Argo CD's own Lua engine.
# `hack/test.sh docs` (`make test-docs`): the tutorial's commands run and their output checked.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(repo_root)"

started=0
if ! hack/bed.sh status >/dev/null 2>&1; then
  started=1
  trap 'hack/bed.sh down' EXIT
fi

# Build first, while the bed comes up: the cold build and the cold bed are the long poles.
make -s build 2>&1 | tail -n 3 &
build=$!
hack/helm.sh install &
helm=$!
argocd=
if [ "${1:-all}" = gitops ]; then
  hack/argocd.sh build &
  argocd=$!
fi
if [ "$started" = 1 ]; then
  hack/bed.sh up
else
  echo "bed: reusing the running test bed" >&2
  # The demo operator watches every namespace and would fight the operator each test starts.
  hack/bed.sh stop-operator
fi
wait "$build"
wait "$helm"
[ -z "$argocd" ] || wait "$argocd"

eval "$(hack/bed.sh env)"
case "${1:-all}" in
  # Unit tests, mocks, CRD staleness, then the end-to-end tests against the bed.
  all) cargo test --all-targets --locked -- --include-ignored --skip chaos_ --skip bench_ --skip gitops_ --test-threads "${TEST_THREADS:-4}" ;;
  chaos) cargo test --test chaos --locked -- --include-ignored --nocapture ;;
  gitops)
    trap 'hack/argocd.sh down; [ "$started" = 0 ] || hack/bed.sh down' EXIT
    hack/argocd.sh up
    eval "$(hack/argocd.sh env)"
    cargo test --test gitops --locked -- --include-ignored --nocapture
    ;;
  docs) hack/test-docs.sh ;;
  *) die "usage: $0 [all|chaos|gitops|docs]" ;;
esac
