#!/usr/bin/env bash
# The GPU check: one call on a lent machine, inside 8 minutes (each step has its own time limit).
#   1. the engine and model tests on the GPU
#   2. bench/train.py at d12 and d20, bf16, cuDNN attention: tokens/s, MFU, peak memory
#   3. bench/engine.py: decode at batch 1/8/32/128 (and its DPO-step table)
# and one table of it all, $OUT/gpu.md, with each step's full output beside it.
#
#   bench/gpu.sh            on the lent machine; bench/RESULTS.md "GPU check" has the exact call
#   bench/gpu.sh --tiny     the same steps at toy sizes on this CPU (checks the driver, not the GPU)
#   bench/gpu.sh --dry-run  print the steps and their time limits
#
# The image lacks some of our dependencies (rustbpe): scripts/gpu-wheels.sh puts them in .whl/, which
# the call carries and this script installs into /tmp/site.
set -uo pipefail  # no -e: a step that fails or times out leaves its row empty, the others still run
cd "$(dirname "$0")/.."
MODE=gpu
for arg in "$@"; do
  case $arg in
    --tiny) MODE=tiny ;;
    --dry-run) MODE=dry ;;
    *) echo "error: unknown option $arg (use --tiny or --dry-run)"; exit 2 ;;
  esac
done
OUT=${OUT:-${NANOCODE_HOME:-$HOME/.cache/nanocode}/bench-gpu}
TESTS=${TESTS:-tests/test_engine.py tests/test_model.py}
export PYTHONUNBUFFERED=1

if [ "$MODE" = tiny ]; then  # the venv's Python, fp32 (bf16 matmuls crawl on CPU), tiny shapes
  PYTHON=${PYTHON:-.venv/bin/python}
  DEPTHS="1 2"; TRAIN="--seq-len 64 --vocab 512 --batch 2 --steps 4 --dtype float32 --attention xla"
  ENGINE="--depth 1 --batches 1,8 --repeats 1 --pairs 1"
  LIMIT_TESTS=300 LIMIT_ENGINE=300 LIMIT_TRAIN=120  # generous: no budget here
else
  PYTHON=${PYTHON:-python3}
  DEPTHS="12 20"; TRAIN="--seq-len 2048 --vocab 32768 --batch 16 --steps 12 --dtype bfloat16 --attention cudnn"
  ENGINE="--batches 1,8,32,128"
  LIMIT_TESTS=180 LIMIT_ENGINE=110 LIMIT_TRAIN=80  # 180 + 2 x 80 + 110 s = 7.5 min, plus the install
fi

if [ "$MODE" = dry ]; then
  echo "tests   (${LIMIT_TESTS}s): $PYTHON -m pytest -x -p no:cacheprovider $TESTS"
  for d in $DEPTHS; do echo "train   (${LIMIT_TRAIN}s): $PYTHON bench/train.py --depth $d $TRAIN"; done
  echo "engine  (${LIMIT_ENGINE}s): $PYTHON bench/engine.py $ENGINE"
  echo "table: $OUT/gpu.md"
  exit 0
fi

mkdir -p "$OUT"
if [ "$MODE" = gpu ]; then
  shopt -s nullglob; wheels=(.whl/*.whl); shopt -u nullglob
  if [ ${#wheels[@]} -gt 0 ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "${wheels[@]}" || exit 2
  fi
  export PYTHONPATH=/tmp/site:$PWD
fi
# a missing wheel would fail every step: say so once, with what to run
if ! probe=$("$PYTHON" -c "import tests.test_engine, tests.test_model, trainer.train, trainer.dpo, jax, platform
d = jax.devices()[0]
print(f'{d.device_kind}, jax {jax.__version__} ({d.platform}), Python {platform.python_version()}')" 2>&1); then
  echo "error: ${probe##*$'\n'} -- run scripts/gpu-wheels.sh where pip works, then call again carrying .whl"
  exit 2
fi
echo "$probe" | tail -1 >"$OUT/machine.txt"

# a bench script, then its peak device memory (the allocator's high-water mark): python -c "$PEAK" SCRIPT ARGS
PEAK='import runpy, sys, jax
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
stats = jax.devices()[0].memory_stats() or {}
peak = stats.get("peak_bytes_in_use")
print("peak memory: n/a" if peak is None else f"peak memory: {peak / 2**30:.2f} GiB")'

t0=$SECONDS
timeout "$LIMIT_TESTS" "$PYTHON" -m pytest -x -p no:cacheprovider $TESTS >"$OUT/tests.txt" 2>&1
echo "tests: exit $? in $((SECONDS - t0)) s"
for d in $DEPTHS; do
  timeout "$LIMIT_TRAIN" "$PYTHON" -c "$PEAK" bench/train.py --depth "$d" $TRAIN >"$OUT/train-d$d.txt" 2>&1
  echo "train d$d: exit $?"
done
timeout "$LIMIT_ENGINE" "$PYTHON" -c "$PEAK" bench/engine.py $ENGINE >"$OUT/engine.txt" 2>&1
echo "engine: exit $?"

# the table: one row per figure, read from the step outputs (a step that died leaves "-")
field() { awk -F'|' -v n="$2" '{gsub(/^ +| +$/, "", $n); print $n}' <<<"$1"; }
peak() { grep -oP 'peak memory: \K.*' "$1" || echo -; }
{
  echo "# bench/gpu.sh ($MODE): $(cat "$OUT/machine.txt"), $(date -u +%Y-%m-%d)"
  echo
  echo "| check | setting | tok/s | MFU | peak memory | detail |"
  echo "|---|---|---|---|---|---|"
  echo "| tests | $TESTS | | | | $(grep -E "passed|failed|error" "$OUT/tests.txt" | tail -1) |"
  for d in $DEPTHS; do
    f=$OUT/train-d$d.txt; row=$(grep -E '^\| [0-9]' "$f" | tail -1)
    echo "| pretrain step | d$d, $(grep -oP '^config: \K.*' "$f" | cut -d, -f2,5,6 | sed 's/^ //') | $(field "$row" 4) | $(field "$row" 7) |" \
      "$(peak "$f") | step $(field "$row" 3) ms, compile $(field "$row" 2) s, ${row:+$(field "$row" 5) GFLOP/s of $(field "$row" 6)} |"
  done
  grep -E '^\| [0-9]+ \| [0-9]+ ms' "$OUT/engine.txt" | while read -r row; do
    echo "| decode | batch $(field "$row" 2) | $(field "$row" 5) | | $(peak "$OUT/engine.txt") |" \
      "TTFT $(field "$row" 3), TPOT $(field "$row" 4), $(field "$row" 8) the cache-free path's tok/s |"
  done
} >"$OUT/gpu.md"
cat "$OUT/gpu.md"
