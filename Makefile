# amint_pl: `make run` (set-up + the default experiment, offline), `make test` (set-up + the suite),
# `make bench` (set-up + the speed bench).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.amint-installed
# W&B stays offline unless you say otherwise (WANDB_MODE=online make run).
export WANDB_MODE ?= offline

.PHONY: install run test test-fast lint format bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; reuses an existing .venv.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

run: install
	$(BIN)/python -m amint_pl.run $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

# The quick lane: the in-process tests (about a minute on 2 cores); `make test` runs them all.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

# The speed bench (8 min on 2 busy CPU cores): experiments/results/bench-<machine>.json and .md.
# ARGS="--quick" for a smoke test (its files go to a scratch folder); on a GPU: ARGS="--device cuda --precision bf16-mixed --models resnet18,vit"
bench: install
	$(BIN)/python experiments/bench.py $(ARGS)

lint: install
	$(BIN)/ruff check amint_pl tests experiments
	$(BIN)/ruff format --check amint_pl tests experiments

format: install
	$(BIN)/ruff format amint_pl tests experiments
	$(BIN)/ruff check --fix amint_pl tests experiments

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
