#!/usr/bin/env bash
# Several workers with shared state in Redis: does throughput scale, and what does Redis cost?
#   bash bench/multiworker.sh [--quick] [more compare.py args]
# Runs compare.py with three gateway targets against the same mock, in one run:
#   ours            1 worker, in-process state, pinned to CPU 0 (the per-core reference)
#   ours-w1-redis   1 worker, state in Redis, pinned to CPU 0 (what Redis costs per request)
#   ours-w2-redis   2 workers, state in Redis, on every CPU (shares CPU 1 with the load
#                   generator and the mock on a 2-core box; see README "Multi-worker")
# Redis: $REDIS_URL (as a real deployment sets it), else 127.0.0.1:6379. Keys go under a
# per-run prefix and are deleted at the end. Needs the venvs bench/run.sh builds.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_DIR="${BENCH_DIR:-${TMPDIR:-/tmp}/gateway-bench}"
export BENCH_DIR
REDIS="${REDIS_URL:-redis://127.0.0.1:6379/0}"
ARGS=(--litellm '' --ours --ours-workers 1 --ours-workers 2 --redis-url "$REDIS"
      --nonstream 1:400,16:3000,64:3000 --stream 1:200,16:2000,64:2000 --reps 2)
if [ "${1:-}" = "--quick" ]; then
  shift
  ARGS=(--litellm '' --ours --ours-workers 1 --ours-workers 2 --redis-url "$REDIS"
        --nonstream 1:200,16:1000 --stream 16:600 --reps 1)
fi
if ! "$BENCH_DIR/venv-bench/bin/python" "$HERE/compare.py" --redis-answers "$REDIS"
then
  echo "multiworker: SKIPPED (no Redis answering at $REDIS; start redis-server or set REDIS_URL)"
  exit 0
fi
exec "$BENCH_DIR/venv-bench/bin/python" "$HERE/compare.py" "${ARGS[@]}" "$@"
