# bilevel_rl — `make run` (quickstart) and `make test` on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch pinned: 2.13.0 resolves to the local CPU wheel; plain `torch` would pull GBs of CUDA packages
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run test test-slow lint typecheck check benchmark clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[mujoco,atari,wandb,slurm,dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/bilevel-rl exp=quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2  # 2 workers (pytest-xdist): the 2 cores of the CI machine

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check bilevel_rl tests scripts
	$(BIN)/ruff format --check bilevel_rl tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy bilevel_rl

check: lint typecheck test

benchmark: $(STAMP)
	$(BIN)/python scripts/benchmark_overhead.py

clean:
	rm -rf $(VENV) runs multirun outputs .pytest_cache .mypy_cache .ruff_cache
