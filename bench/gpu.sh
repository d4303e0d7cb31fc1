#!/usr/bin/env bash
# The GPU check, one call on a lent machine (its image has jax, flax, optax, orbax; rustbpe
# travels as a wheel in .whl/): engine/model tests, then bench/engine.py and bench/train.py.
# Output goes to $OUT (or ./gpu-out) for bench/RESULTS.md.
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_engine.py tests/test_model.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
timeout 150 python3 bench/engine.py --batches 1,8,32,128 2>&1 | tee "$OUT/engine.txt"
for depth in 12 20; do
  timeout 100 python3 bench/train.py --depth $depth --seq-len 2048 --vocab 32768 --batch 16 --steps 12 \
    --dtype bfloat16 --attention cudnn 2>&1 | tee "$OUT/train-d$depth.txt"
done
