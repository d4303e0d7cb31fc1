# Sourced by runs/*.sh: what both recipes share.
#   start_run               the system tools, then RUN made; one that exists is refused unless RESUME=1
#   stage NAME COMMAND...   run it, then print its wall time and cost and add it to RUN/stages.tsv;
#                           with RESUME=1 a stage stages.tsv lists as finished is skipped
#   resume_flag DIR         --resume when RESUME=1 and the training stage DIR holds a checkpoint
#   evals_all               the evals on RUN's last stage: bpb, copy, preference, SOUL, agentic
#                           (CORE is the speedrun's own: it needs a download)
#   finish                  the report, then every stage and the total, printed and saved as RUN/stages.md
# Cost = seconds x GPUS / 3600 x GPU_HOUR_USD (a rented host's GPUs are paid for, busy or idle).
# Needs RUN, GPUS, GPU_HOUR_USD set (evals_all: CORPUS and the EVALS_* arrays too).

_cost() {  # SECONDS FORMAT: FORMAT gets minutes, seconds, GPU-hours, dollars
  awk -v s="$1" -v g="$GPUS" -v p="$GPU_HOUR_USD" -v f="$2" 'BEGIN { printf f, s / 60, s % 60, s * g / 3600, s * g / 3600 * p }'
}

start_run() {
  scripts/system-deps.sh demo  # bubblewrap: the factory's rollouts and the agentic eval run model-written commands in it
  [ ! -e "$RUN" ] || [ "${RESUME:-0}" = 1 ] || {
    echo "error: $RUN exists (hours of training, perhaps): move it away first, or go on with it: --resume"; exit 2; }
  mkdir -p "$RUN"
}

stage() {
  local name=$1 t0=$SECONDS
  shift
  echo
  if [ "${RESUME:-0}" = 1 ] && cut -f1 "$RUN/stages.tsv" 2>/dev/null | grep -qx "$name"; then
    echo "== $name: finished earlier ($RUN/stages.tsv), skipped"
    return
  fi
  echo "== $name"
  "$@"
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >>"$RUN/stages.tsv"
  echo "== $name: $(_cost $((SECONDS - t0)) '%dm %02ds, %.2f GPU-hours, $%.2f')"
}

resume_flag() {  # a training stage cut off mid-way goes on from its latest checkpoint
  [ "${RESUME:-0}" = 1 ] && compgen -G "$1/checkpoints/[0-9]*" >/dev/null && echo --resume
  return 0
}

evals_all() {
  evals bpb "$RUN" --corpus "$CORPUS" "${EVALS_BPB[@]}"
  evals copy "$RUN"  # the induction probe: can it copy a name from its context?
  evals preference "$RUN" --data factory:latest
  evals soul "$RUN" "${EVALS_SOUL[@]}"
  evals agentic "$RUN" "${EVALS_AGENTIC[@]}"
}

finish() {
  stage report evals report "$RUN"
  summary
  echo "report: $RUN/report.html"
  echo "chat with it: nanocode chat --model $RUN/dpo"
}

summary() {
  local name s total=0
  {
    echo "$RUN: $GPUS GPU(s) at \$$GPU_HOUR_USD per GPU-hour"
    echo
    echo "| stage | wall | GPU-hours | cost |"
    echo "|---|---|---|---|"
    while IFS=$'\t' read -r name s; do
      echo "| $name | $(_cost "$s" '%dm %02ds | %.2f | $%.2f') |"
      total=$((total + s))
    done <"$RUN/stages.tsv"
    echo "| total | $(_cost "$total" '%dm %02ds | %.2f | $%.2f') |"
  } | tee "$RUN/stages.md"
}

toy_scale() {  # --smoke: every stage at toy size on CPU (none learns anything; each must run)
  GPUS=0 CORPUS_CHARS=4000000 VOCAB=1024
  PRETRAIN=(--config d1 --seq-len 256 --device-batch-size 2 --total-batch-tokens 1024 --steps 6
            --eval-every 6 --eval-tokens 2048 --sample-every 6 --save-every 6)
  FINETUNE=(--seq-len 2048 --device-batch-size 1 --steps 2 --eval-every 2)
  EVALS_BPB=(--max-tokens 2048 --batch-size 1) EVALS_SOUL=(--limit 2 --max-tokens 16)
  EVALS_AGENTIC=(--limit 1 --max-steps 2 --max-tokens 32)
}
