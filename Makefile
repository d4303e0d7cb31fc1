# Two commands do all set-up on a fresh machine:
#   make demo   the main job at tiny scale, offline, on CPU
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NANOCODE_HOME ?= $(HOME)/.cache/nanocode

.PHONY: demo test bench clean-demo

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

DEMO := $(NANOCODE_HOME)/runs/demo

# corpus -> tokenizer -> pretrain d3 -> factory (offline) -> SFT -> DPO -> evals -> report
demo: $(BIN)/.installed
	scripts/system-deps.sh demo
	$(BIN)/trainer data local --max-chars 30000000
	$(BIN)/trainer tokenizer train --vocab-size 8192
	$(BIN)/trainer tokenizer train --vocab-size 8192 --code-ratio 0:1 --out $(NANOCODE_HOME)/tokenizer-prose
	$(BIN)/trainer tokenizer eval
	rm -rf $(DEMO)
	$(BIN)/trainer run pretrain --config d3 --steps 60 --eval-every 30 --sample-every 60 --out $(DEMO)/pretrain
	$(BIN)/factory build --soul soul/SOUL.md
# SFT with the compact system prompt (nanocode/prompts/compact.j2): ~130 tokens a row that the model
# never learns from instead of ~700; DPO and the evals take it from the run. Context 1024, the longer
# rows truncated (each keeps its first calls), 200 steps at --lr-scale 4 (5x the SFT default): the
# sweep's best valid-call rate inside the demo's budget (bench/RESULTS.md, "Demo model"). A fine-tuning
# stage that fails is one `error:` line and the demo goes on: the evals use the last stage there is,
# the report names the missing one
	-$(BIN)/trainer run sft --from $(DEMO)/pretrain --data factory:latest --out $(DEMO)/sft \
	  --seq-len 1024 --overflow truncate --device-batch-size 2 --steps 200 --lr-scale 4 --prompt compact
	-$(BIN)/trainer run dpo --from $(DEMO)/sft --data factory:latest --out $(DEMO)/dpo \
	  --seq-len 2048 --device-batch-size 2 --steps 8
	$(BIN)/evals bpb $(DEMO)
	$(BIN)/evals copy $(DEMO)  # can it copy from its context (a file name it was given)?
	$(BIN)/evals preference $(DEMO) --data factory:latest
	$(BIN)/evals soul $(DEMO) --limit 8
# sampled at the eval's default (temperature 0.3, top-k 50, seed 0): repeatable, and the setting
# where the SFT model's calls are valid (bench/RESULTS.md, "Demo model")
	$(BIN)/evals agentic $(DEMO) --limit 4 --max-steps 4 --max-tokens 256
	$(BIN)/evals report $(DEMO)  # ends with the model's valid-call rate and calls per task
	@echo "report: $(DEMO)/report.html"
	@echo "chat with the model: $(BIN)/nanocode chat --model $(DEMO)/dpo"

# the llama extra (tests/test_real_model.py), apart so `make demo` never pays for it: PyPI ships
# llama-cpp-python as source, minutes to build on 2 cores, once (pip caches the wheel).
# GGML_NATIVE=OFF: no -march=native, a VM may advertise instructions (AVX-512, AMX) it cannot run
# (ggml still builds AVX/AVX2/FMA/F16C then); LLAVA_BUILD=OFF: no multimodal library, a quarter of
# the compile, and SmolLM2 reads text
$(BIN)/.llama: $(BIN)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
	  $(BIN)/pip install -q --disable-pip-version-check -e '.[llama]'
	touch $@

# --durations: every run names its slowest tests, so the suite's time has an owner
test: $(BIN)/.installed $(BIN)/.llama
	scripts/system-deps.sh test
	$(BIN)/python -m pytest --durations=15

bench: $(BIN)/.installed
	$(BIN)/python bench/tokenizer.py
	$(BIN)/python bench/train.py

# the wheels the lent GPU machine's image lacks, into .whl/ for bench/gpu.sh (bench/RESULTS.md, "GPU check")
.PHONY: gpu-wheels
gpu-wheels: $(BIN)/.installed
	PYTHON=$(BIN)/python scripts/gpu-wheels.sh
