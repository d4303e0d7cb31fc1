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

demo: $(BIN)/.installed
	$(BIN)/trainer data local --max-chars 30000000
	$(BIN)/trainer tokenizer train --vocab-size 8192
	$(BIN)/trainer tokenizer train --vocab-size 8192 --code-ratio 0:1 --out $(NANOCODE_HOME)/tokenizer-prose
	$(BIN)/trainer tokenizer eval
	rm -rf $(NANOCODE_HOME)/runs/demo
	$(BIN)/trainer run pretrain --config d3 --steps 60 --eval-every 30 --sample-every 60 --out $(NANOCODE_HOME)/runs/demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/tokenizer.py
	$(BIN)/python bench/train.py
