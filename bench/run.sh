#!/usr/bin/env bash
# The whole overhead benchmark in one command (loopback only, bounded in count and time):
#   bash bench/run.sh            # full: ~15 min on 2 cores
#   bash bench/run.sh --quick    # ~4 min: 1 rep, small cells
# Steps: build the venvs if missing, then
#   1. compare.py: direct (the mock), LiteLLM proxy (lean preset), this gateway (one worker,
#      pinned to CPU 0 like LiteLLM): latency added, req/s, CPU/request, start-up, idle RSS
#   2. token_count_bench.py: counting 10k-token prompts vs forwarding them
#   3. multiworker.sh: 1 and 2 workers with Redis state (skipped when no Redis answers)
#   4. startup_network_check.py: no connect()/send() off loopback while starting (strace)
# and write $BENCH_DIR/results/<timestamp>/report.txt.
# Env: BENCH_DIR (default $TMPDIR/gateway-bench), LITELLM_VERSION (default 1.108.7),
# REDIS_URL (default redis://127.0.0.1:6379/0). Extra args go to step 1 (compare.py).
# Flags: --quick, --no-litellm, --no-multiworker, --no-tokens, --commit REF (benchmark that
# commit, unpacked under $BENCH_DIR/src-<sha> with its own venv, instead of the working
# tree: the numbers then belong to one commit even while the tree changes).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
BENCH_DIR="${BENCH_DIR:-${TMPDIR:-/tmp}/gateway-bench}"
export BENCH_DIR
LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
export LITELLM_VENV="${LITELLM_VENV:-$BENCH_DIR/venv-litellm}"
export GATEWAY_VENV="${GATEWAY_VENV:-$BENCH_DIR/venv-gateway}"

ALL_ARGS="$*"
QUICK=() LITELLM=(--litellm lean) MULTI=1 TOKENS=1 PASS=() COMMIT=""
while [ $# -gt 0 ]; do
  arg="$1"; shift
  case "$arg" in
    --commit) COMMIT="$1"; shift ;;
    --quick) QUICK=(--quick) ;;
    --no-litellm) LITELLM=(--litellm '') ;;
    --no-multiworker) MULTI=0 ;;
    --no-tokens) TOKENS=0 ;;
    *) PASS+=("$arg") ;;
  esac
done

mkdir -p "$BENCH_DIR"
SRC="$REPO"
if [ -n "$COMMIT" ]; then
  SHA="$(git -C "$REPO" rev-parse --short "$COMMIT")"
  SRC="$BENCH_DIR/src-$SHA"
  GATEWAY_VENV="$BENCH_DIR/venv-gateway-$SHA"
  export GATEWAY_VENV
  if [ ! -d "$SRC" ]; then
    mkdir -p "$SRC"
    git -C "$REPO" archive "$SHA" | tar -x -C "$SRC"
  fi
fi
pipi() { "$1/bin/pip" install -q --disable-pip-version-check "${@:2}"; }
if [ ! -x "$BENCH_DIR/venv-bench/bin/python" ]; then
  echo "building $BENCH_DIR/venv-bench (load generator + mock)" >&2
  python3 -m venv "$BENCH_DIR/venv-bench"
  pipi "$BENCH_DIR/venv-bench" -c "$REPO/constraints.txt" uvloop httptools orjson
fi
if [ ! -x "$GATEWAY_VENV/bin/gateway" ]; then
  echo "building $GATEWAY_VENV (this gateway from $SRC, editable, pinned deps)" >&2
  python3 -m venv "$GATEWAY_VENV"
  (cd "$SRC" && pipi "$GATEWAY_VENV" -c constraints.txt -e .)
fi
if [ "${LITELLM[1]}" != "" ] && [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
  echo "building $LITELLM_VENV (litellm[proxy]==$LITELLM_VERSION)" >&2
  python3 -m venv "$LITELLM_VENV"
  pipi "$LITELLM_VENV" "litellm[proxy]==$LITELLM_VERSION"
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) missing: pass --no-pin" >&2; exit 1; }

OUT="$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "results -> $OUT" >&2
T0=$(date +%s)

# ours-w1-redis-key (every request on a virtual key with a budget and rpm, state in Redis) is held to
# the same targets against LiteLLM in the same run (issue 9); skipped when no Redis answers
"$BENCH_DIR/venv-bench/bin/python" "$HERE/compare.py" "${LITELLM[@]}" --ours "${QUICK[@]}" \
  --ours-key --redis-url "${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}" \
  --out "$OUT/compare" "${PASS[@]}" | tee "$OUT/compare.txt"

if [ "$TOKENS" = 1 ]; then
  "$GATEWAY_VENV/bin/python" "$HERE/token_count_bench.py" "${QUICK[@]}" --out "$OUT/tokens" \
    --json "$OUT/tokens.json" | tee "$OUT/tokens.txt"
fi

if [ "$MULTI" = 1 ]; then
  bash "$HERE/multiworker.sh" "${QUICK[@]}" --out "$OUT/multiworker" | tee "$OUT/multiworker.txt"
fi

"$GATEWAY_VENV/bin/python" "$HERE/startup_network_check.py" --out "$OUT/startup-net" | tee "$OUT/startup-net.txt" || true

{
  echo "# gateway overhead benchmark: $(date '+%Y-%m-%d %H:%M %Z'), $(( ($(date +%s) - T0) / 60 )) min"
  echo "# command: bench/run.sh $ALL_ARGS"
  if [ -n "$COMMIT" ]; then echo "# gateway: commit $SHA ($SRC)"
  else echo "# gateway: working tree at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') $(git -C "$REPO" status --porcelain -- gateway routing_policies 2>/dev/null | grep -q . && echo '+ uncommitted changes in gateway/ or routing_policies/')"; fi
  echo
  echo "## 1. direct / LiteLLM / this gateway"; cat "$OUT/compare.txt"; echo
  [ -f "$OUT/tokens.txt" ] && { echo "## 2. token counting"; cat "$OUT/tokens.txt"; echo; }
  [ -f "$OUT/multiworker.txt" ] && { echo "## 3. multi-worker + Redis"; cat "$OUT/multiworker.txt"; echo; }
  echo "## 4. start-up network"; cat "$OUT/startup-net.txt"
} > "$OUT/report.txt"
echo >&2
echo "report: $OUT/report.txt" >&2
