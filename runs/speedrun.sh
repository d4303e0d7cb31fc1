#!/usr/bin/env bash
# The whole pipeline on one GPU host, from nothing to a report, with each stage's time and cost:
#   Hub corpora -> tokenizer -> pretrain -> factory (Hub seeds, a real model) -> SFT (+ general chat)
#   -> DPO -> evals -> report
#
#   runs/speedrun.sh [d12|d20|d24]   the preset (default d20); all local GPUs train it (a data mesh)
#   runs/speedrun.sh --smoke         the same script end to end at toy scale on CPU (or SMOKE=1): the
#                                    offline corpus, a d1 model, the factory against a scripted server
#   runs/speedrun.sh --resume        go on with a run that stopped: finished stages are skipped, a
#                                    training stage continues from its last checkpoint
#
# Settings, from the environment:
#   NANOCODE_HOME   where everything goes [~/.cache/nanocode]; this run is $NANOCODE_HOME/runs/speedrun-PRESET
#   BASE_URL MODEL  the factory's model: any OpenAI-compatible server (OPENAI_API_KEY for its key).
#                   Unset: `vllm serve $TEACHER` on this host's GPUs while the factory runs
#                   (pip install 'nanocode[vllm]')
#   TEACHER         the model vLLM serves [Qwen/Qwen3-Coder-30B-A3B-Instruct]
#   GPU_HOUR_USD    the price of one GPU-hour, for the cost lines [2.50]
#   CHAT_DATA       general chat mixed into SFT, SOURCE@WEIGHT [HuggingFaceTB/smol-smoltalk@0.05]
set -euo pipefail
cd "$(dirname "$0")/.."
source runs/lib.sh
[ -x .venv/bin/trainer ] && export PATH=$PWD/.venv/bin:$PATH  # make's venv, when there is one

SMOKE=${SMOKE:-0} RESUME=0
PRESET=d20
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    --resume) RESUME=1 ;;
    d12 | d20 | d24) PRESET=$arg ;;
    *) echo "error: unknown argument $arg (use d12, d20, d24, --smoke or --resume)"; exit 2 ;;
  esac
done
export NANOCODE_HOME=${NANOCODE_HOME:-$HOME/.cache/nanocode}
GPU_HOUR_USD=${GPU_HOUR_USD:-2.50}
TEACHER=${TEACHER:-Qwen/Qwen3-Coder-30B-A3B-Instruct}
if [ "$SMOKE" = 1 ]; then PRESET=smoke; fi
RUN=$NANOCODE_HOME/runs/speedrun-$PRESET
CORPUS=$NANOCODE_HOME/corpus/hf
if [ "$SMOKE" = 1 ] && [ "$RESUME" = 0 ]; then rm -rf "$RUN"; fi
start_run

# Per preset: the prose to fetch, enough for its horizon (8 tokens per parameter, 1:5 code:prose)
# without repeating a document; The Stack's small sample is all fetched and repeats.
case $PRESET in
  d12) PROSE_DOCS=1000000 ;;
  d20) PROSE_DOCS=3500000 ;;
  d24) PROSE_DOCS=6000000 ;;
esac
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
PRETRAIN=(--config "$PRESET") VOCAB=32768
FACTORY=(--config factory/configs/hub.yaml)
FINETUNE=()
EVALS_SOUL=() EVALS_AGENTIC=() EVALS_BPB=() EVALS_CORE=()
CHAT_DATA=${CHAT_DATA:-HuggingFaceTB/smol-smoltalk@0.05}
if [ "$SMOKE" = 1 ]; then  # offline: the local corpus, Hub seeds from tests/fixtures, a scripted server
  toy_scale
  CORPUS=$NANOCODE_HOME/corpus/local
  FACTORY=(--config factory/configs/hub-smoke.yaml --limit 20)
  CHAT_DATA=tests/fixtures/sources/smoltalk/data/all/train-00000-of-00001.jsonl
  EVALS_CORE=(--bundle tests/fixtures/core)
fi

corpus() {
  if [ "$SMOKE" = 1 ]; then
    trainer data local --max-chars "$CORPUS_CHARS" --out "$CORPUS"
  else
    trainer data download HuggingFaceFW/fineweb-edu --kind prose --config sample-10BT --max-docs "$PROSE_DOCS" --out "$CORPUS"
    trainer data download bigcode/the-stack-smol --kind code --column content --out "$CORPUS"
  fi
}
stage corpus corpus

stage tokenizer trainer tokenizer train --corpus "$CORPUS" --vocab-size "$VOCAB" --out "$RUN/tokenizer"

stage pretrain trainer run pretrain "${PRETRAIN[@]}" --corpus "$CORPUS" --tokenizer "$RUN/tokenizer" --out "$RUN/pretrain" \
  $(resume_flag "$RUN/pretrain")

# The factory's model: the given server, or vLLM on this host for the length of the build.
# Smoke: tests/scripted_server.py answering as tests/fake_model.py does (a draft it cannot parse
# gets a reply that is not JSON, as a real model's bad answer would be).
backend_up() {
  if [ "$SMOKE" = 1 ]; then
    python - >"$RUN/backend.url" 2>"$RUN/backend.log" <<'PY' &
import sys, threading
sys.path.insert(0, ".")
from tests.fake_model import respond
from tests.scripted_server import ScriptedServer

def answer(body):
    try:
        return respond(body)
    except ValueError:
        return {"text": "sorry, I cannot do that"}

print(ScriptedServer(respond=answer).start().base_url, flush=True)
threading.Event().wait()
PY
    BACKEND_PID=$! MODEL=scripted
  elif [ -z "${BASE_URL:-}" ]; then
    command -v vllm >/dev/null || { echo "error: no BASE_URL given and no vllm here: pip install 'nanocode[vllm]'"; exit 2; }
    vllm serve "$TEACHER" --port 8001 --tensor-parallel-size "$GPUS" \
      --max-model-len 16384 >"$RUN/backend.log" 2>&1 &
    BACKEND_PID=$! MODEL=$TEACHER
    echo http://127.0.0.1:8001/v1 >"$RUN/backend.url"
  else
    [ -n "${MODEL:-}" ] || { echo "error: BASE_URL is set but MODEL is not: name the model it serves"; exit 2; }
    return
  fi
  trap 'kill $BACKEND_PID 2>/dev/null || true' EXIT
  # up when GET /models answers (vLLM loads the weights first: minutes)
  for _ in $(seq 1800); do
    kill -0 "$BACKEND_PID" 2>/dev/null || { echo "error: the model server died: $RUN/backend.log"; exit 2; }
    BASE_URL=$(cat "$RUN/backend.url")
    python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/models', timeout=2)" "$BASE_URL" \
      2>/dev/null && return
    sleep 1
  done
  echo "error: the model server did not answer in 30 minutes: $RUN/backend.log"; exit 2
}
factory_build() {
  backend_up
  factory build "${FACTORY[@]}" --base-url "$BASE_URL" --model "$MODEL"
  if [ -n "${BACKEND_PID:-}" ]; then kill "$BACKEND_PID"; wait "$BACKEND_PID" 2>/dev/null || true; fi  # frees the GPUs
}
stage factory factory_build

stage sft trainer run sft --from "$RUN/pretrain" --data factory:latest --data "$CHAT_DATA" "${FINETUNE[@]}" --out "$RUN/sft" \
  $(resume_flag "$RUN/sft")
stage dpo trainer run dpo --from "$RUN/sft" --data factory:latest "${FINETUNE[@]}" --out "$RUN/dpo" \
  $(resume_flag "$RUN/dpo")

core() {
  [ "$SMOKE" = 1 ] || evals core download
  evals core "$RUN" "${EVALS_CORE[@]}"
}
stage evals evals_all  # runs/lib.sh: bpb, copy, preference, SOUL, agentic
stage core core
finish
