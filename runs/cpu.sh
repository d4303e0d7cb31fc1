#!/usr/bin/env bash
# The longest useful run on a CPU, offline: `make demo`'s pipeline at its full size, about an hour on
# two cores (the d3 preset's whole horizon, 5,664 steps of 4,096 tokens at ~0.5 s a step on the 2-core
# VM of bench/RESULTS.md, is most of it):
#   the whole local corpus -> tokenizer (8192) -> pretrain d3 -> factory (offline, every seed and
#   scenario) -> SFT (the demo's, at half its lr) and DPO (one epoch) -> evals on every held-out task -> report
#
#   runs/cpu.sh            this run is $NANOCODE_HOME/runs/cpu; each stage prints its wall time
#   runs/cpu.sh --smoke    the same script end to end at toy scale (or SMOKE=1; CI runs it)
#   runs/cpu.sh --resume   go on with a run that stopped: finished stages are skipped, a training
#                          stage continues from its last checkpoint
#
# What it buys over the demo (bench/RESULTS.md, "runs/cpu.sh"): copying from the context forms
# (steps 1,500-3,000), and first calls name the task's file on 13-24% of the tasks, where the demo's
# never do; no task passes. Past this, runs/speedrun.sh on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source runs/lib.sh
[ -x .venv/bin/trainer ] && export PATH=$PWD/.venv/bin:$PATH  # make's venv, when there is one

SMOKE=${SMOKE:-0} RESUME=0
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    --resume) RESUME=1 ;;
    *) echo "error: unknown argument $arg (use --smoke or --resume)"; exit 2 ;;
  esac
done
export NANOCODE_HOME=${NANOCODE_HOME:-$HOME/.cache/nanocode}
GPUS=0 GPU_HOUR_USD=0
RUN=$NANOCODE_HOME/runs/cpu
CORPUS=$NANOCODE_HOME/corpus/local
CORPUS_CHARS=
VOCAB=8192
PRETRAIN=(--config d3)
FACTORY=()
# SFT: the demo's recipe (compact system prompt, rows cut to 1024, 200 steps) at half its lr: on this
# base 2x beat the demo's 4x on every tool-call figure, before DPO and after (bench/RESULTS.md,
# "runs/cpu.sh"); DPO one epoch. FINETUNE comes last on both lines: --smoke's toy sizes win
SFT=(--seq-len 1024 --overflow truncate --steps 200 --lr-scale 2 --prompt compact)
DPO=(--seq-len 2048)
FINETUNE=(--device-batch-size 2)
EVALS_BPB=() EVALS_SOUL=()
EVALS_AGENTIC=(--max-steps 6 --max-tokens 256)
if [ "$SMOKE" = 1 ]; then
  toy_scale
  RUN=$NANOCODE_HOME/runs/cpu-smoke
  FACTORY=(--limit 12)
  [ "$RESUME" = 1 ] || rm -rf "$RUN"
fi
start_run

stage corpus trainer data local ${CORPUS_CHARS:+--max-chars "$CORPUS_CHARS"} --out "$CORPUS"

tokenizers() {  # ours, and a prose-only one of the same vocab to compare it with
  trainer tokenizer train --corpus "$CORPUS" --vocab-size "$VOCAB" --out "$RUN/tokenizer"
  trainer tokenizer train --corpus "$CORPUS" --vocab-size "$VOCAB" --code-ratio 0:1 --out "$RUN/tokenizer-prose"
  trainer tokenizer eval --corpus "$CORPUS" --tokenizer "$RUN/tokenizer" --baseline "$RUN/tokenizer-prose"
}
stage tokenizer tokenizers

stage pretrain trainer run pretrain "${PRETRAIN[@]}" --corpus "$CORPUS" --tokenizer "$RUN/tokenizer" --out "$RUN/pretrain" \
  $(resume_flag "$RUN/pretrain")

stage factory factory build "${FACTORY[@]}"

stage sft trainer run sft --from "$RUN/pretrain" --data factory:latest "${SFT[@]}" "${FINETUNE[@]}" --out "$RUN/sft" \
  $(resume_flag "$RUN/sft")
stage dpo trainer run dpo --from "$RUN/sft" --data factory:latest "${DPO[@]}" "${FINETUNE[@]}" --out "$RUN/dpo" \
  $(resume_flag "$RUN/dpo")

stage evals evals_all  # runs/lib.sh: bpb, copy, preference, SOUL, agentic
finish
