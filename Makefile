# lit_sr front door. A fresh clone needs only `make train MODEL=vdsr` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel this machine has; GPU users override, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.install.stamp

MODEL ?= vdsr
PRESET ?= quick
# Distributed training (make train): devices per node, nodes, Lightning strategy, Trainer preset
# (trainers/<TRAINER>.yaml: ddp, ddp_cpu, gpu). Empty = the method preset's own.
DEVICES ?=
NODES ?=
STRATEGY ?=
TRAINER ?=
WORKERS ?= 1
STORAGE ?=
LIT_SR_DATA ?= $(abspath ../shared/data)
# Test processes: one per core here; a test file stays in one process (its module fixtures run once).
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
export LIT_SR_DATA

.PHONY: install train test test-fast lint benchmark compare bench bench-data bench-train sweep sweep-report dashboard clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q $(TORCH_SPEC) -e '.[dev,sweep,export]'
	touch $@

train: $(STAMP)  ## make train MODEL=vdsr [PRESET=quick|paper] [DEVICES=2 NODES=1 STRATEGY=ddp TRAINER=ddp] [ARGS=...]
	$(BIN)/lit-sr train $(MODEL) --preset $(PRESET) $(if $(DEVICES),--devices $(DEVICES)) \
	  $(if $(NODES),--nodes $(NODES)) $(if $(STRATEGY),--strategy $(STRATEGY)) \
	  $(if $(TRAINER),--trainer-preset $(TRAINER)) $(ARGS)

test: $(STAMP)  ## the full suite (what CI runs), TEST_WORKERS pytest-xdist processes (0 = serial)
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)  ## everything but the tests that train (marked slow)
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

benchmark: $(STAMP)  ## Set5/Set14 table of bicubic (x2/x3/x4/x8) or CKPT (its scales) from LIT_SR_DATA [SCALES="2 4"]
	$(BIN)/lit-sr benchmark $(or $(CKPT),bicubic) --data Set5 Set14 $(if $(SCALES),--scales $(SCALES)) --out runs/benchmark

compare: $(STAMP)  ## one table of the trained runs under runs/ (or RUNS="dir ...") -> runs/compare/
	$(BIN)/lit-sr compare $(RUNS)

bench: $(STAMP)  ## every benchmark -> bench/results.md + bench/quality.png (about 30 min on 2 idle cores)
	$(BIN)/python bench/run_all.py $(ARGS)

bench-data: $(STAMP)
	$(BIN)/python bench/bench_data.py $(ARGS)

bench-train: $(STAMP)
	$(BIN)/python bench/bench_train.py $(ARGS)

sweep: $(STAMP)  ## make sweep MODEL=cmsc [PRESET=quick|paper] [WORKERS=N] [STORAGE=URL] [ARGS="--n-trials 4"]
	WANDB_SILENT=true \
	$(BIN)/lit-sr sweep sweeps/$(MODEL).yaml --preset $(PRESET) --workers $(WORKERS) $(if $(STORAGE),--storage $(STORAGE),) $(ARGS)

sweep-report: $(STAMP)  ## the best trial, top-k, plots and its test table: make sweep-report MODEL=cmsc
	WANDB_SILENT=true \
	$(BIN)/lit-sr sweep report sweeps/$(MODEL).yaml --preset $(PRESET) $(if $(STORAGE),--storage $(STORAGE),) $(ARGS)

dashboard: $(STAMP)
	$(BIN)/optuna-dashboard --host 127.0.0.1 $(or $(STORAGE),$(LIT_SR_SWEEP_STORAGE),sqlite:///runs/sweeps/optuna.db)

clean:
	rm -rf runs outputs wandb lightning_logs .pytest_cache
