#!/usr/bin/env bash
# `make bench` (hack/bench.sh fleet) and `make bench-peers` (hack/bench.sh peers): the fleet
# benchmark of tests/bench.rs on the test bed, with the operator's release build, then the plot.
# N (default 1000) sets the fleet size; BENCH_STEADY_SECONDS (300) the steady window,
# BENCH_SETTLE_SECONDS (60) the wait before it, BENCH_DRIFT_WINDOW_SECONDS (600) how long a drift
# repair is waited for, BENCH_SHARDS=0 skips the two-shard phase (it builds the fleet again).
# LocalStack is restarted empty before every run: whatever the bed's EC2 held is gone.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(repo_root)"
what="${1:-fleet}"
case "$what" in fleet | peers) ;; *) die "usage: $0 fleet|peers" ;; esac

started=0
if ! hack/bed.sh status >/dev/null 2>&1; then
  started=1
  trap 'hack/bed.sh down' EXIT
fi

# The harness (dev build, shared with the tests), the release operator, ACK for the peers run,
# the plotting venv and the bed all come up at once: each is a long pole on a cold machine.
logs=.cache/bench-logs
mkdir -p "$logs"
pids=()
make -s build >"$logs/build.log" 2>&1 & pids+=($!)
cargo build --release --locked --bin ec2-operator >"$logs/release.log" 2>&1 & pids+=($!)
bench/plot.sh install >"$logs/plot-install.log" 2>&1 & pids+=($!)
if [ "$what" = peers ]; then hack/ack.sh build >"$logs/ack-build.log" 2>&1 & pids+=($!); fi
if [ "$started" = 1 ]; then
  hack/bed.sh up
else
  echo "bench: reusing the running test bed" >&2
  hack/bed.sh stop-operator
fi
for pid in "${pids[@]}"; do
  wait "$pid" || { tail -n 30 "$logs"/*.log >&2; die "a build step failed (logs in $logs)"; }
done

eval "$(hack/bed.sh env)"
cargo test --test bench --locked -- --ignored --nocapture --exact "bench_$what"
bench/plot.sh
