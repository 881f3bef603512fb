# amint_pl: `make run` (set-up + the default experiment, offline), `make test` (set-up + the suite),
# `make bench` (set-up + the speed bench).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.amint-installed
# W&B stays offline unless you say otherwise (WANDB_MODE=online make run).
export WANDB_MODE ?= offline

.PHONY: install run test test-fast test-lane-1 test-lane-2 test-fast-lane-1 test-fast-lane-2 lint format bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; reuses an existing .venv.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

run: install
	$(BIN)/python -m amint_pl.run $(ARGS)

# The suite runs in two lanes side by side, one per core (-O: each lane's report whole when it
# ends); README "Tests". Lane 1 holds the modules that read the runs tests/conftest.py trains once
# per session, and the Table 1 corner, the bench, the data sets' multirun, progress, validation,
# W&B and the wheel to even the lanes out; lane 2 everything else, new test files included. Tiny
# tensors gain nothing from threads, and two lanes share 2 cores: one thread each unless you say
# otherwise.
LANE_1 := tests/e2e/test_resume.py tests/e2e/test_audit.py tests/e2e/test_generalizing.py \
	tests/e2e/test_train_api.py tests/e2e/test_reference.py tests/e2e/test_paper_grid.py \
	tests/e2e/test_bench.py tests/e2e/test_datasets.py tests/e2e/test_progress.py \
	tests/e2e/test_validation.py tests/e2e/test_wandb.py tests/e2e/test_wheel.py
# The quick lane (-m "not slow": the in-process tests of tests/unit, about a minute): split alike.
FAST_LANE_1 := tests/unit/test_models.py tests/unit/test_training.py tests/unit/test_readers.py
PYTEST = $(BIN)/python -m pytest -q

test: install
	@$(MAKE) --no-print-directory -j2 -O test-lane-1 test-lane-2

test-fast: install
	@$(MAKE) --no-print-directory -j2 -O test-fast-lane-1 test-fast-lane-2

test-lane-1 test-lane-2 test-fast-lane-1 test-fast-lane-2: export OMP_NUM_THREADS ?= 1
test-lane-1:
	$(PYTEST) $(LANE_1) $(ARGS)
test-lane-2:
	$(PYTEST) tests $(addprefix --ignore=,$(LANE_1)) $(ARGS)
test-fast-lane-1:
	$(PYTEST) -m "not slow" $(FAST_LANE_1) $(ARGS)
test-fast-lane-2:
	$(PYTEST) -m "not slow" tests/unit $(addprefix --ignore=,$(FAST_LANE_1)) $(ARGS)

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
