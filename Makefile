# Every target depends on the virtualenv, so any of them works as the first command on a fresh clone.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
ARGS   ?=
NPROC  ?=

.PHONY: install train translate eval inspect serve seeds tune-search faults test test-all lint format wheel bench scaling tensorboard long-range clean

install: $(STAMP)

# torch first, pinned: an unpinned torch would pull gigabytes of CUDA packages on a CPU machine.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e '.[dev,export]'
	touch $(STAMP)

# NPROC=N: N training processes (torch.distributed); default: train.processes (one per core).
train: $(STAMP)
	$(BIN)/nmt-train $(if $(NPROC),train.processes=$(NPROC)) $(ARGS)

translate: $(STAMP)
	$(BIN)/nmt-translate $(ARGS)

eval: $(STAMP)
	$(BIN)/nmt-evaluate $(ARGS)

inspect: $(STAMP)
	$(BIN)/nmt-inspect $(ARGS)

serve: $(STAMP)
	$(BIN)/nmt-serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

# ruff, configured in pyproject.toml: the formatter's verdict and the linter's.
lint: $(STAMP)
	$(BIN)/ruff format --check nmt tests scripts conf
	$(BIN)/ruff check nmt tests scripts conf

format: $(STAMP)
	$(BIN)/ruff format nmt tests scripts conf
	$(BIN)/ruff check --fix nmt tests scripts conf

# A wheel in dist/ (configs inside, as package data): pip install dist/nmt-*.whl
wheel: $(STAMP)
	$(BIN)/python -m build --wheel --outdir dist .

# The speed benchmark of the reference model (scripts/bench.py): ARGS="--run RUN --baseline REV --peers".
bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(ARGS)

scaling: $(STAMP)
	$(BIN)/python scripts/scaling.py $(ARGS)

# One config trained with N seeds (default 3): validation and test BLEU as mean ± sd.
seeds: $(STAMP)
	$(BIN)/python scripts/seeds.py $(ARGS)

# Beam size and length penalty tuned on the validation split: ARGS="RUN [RUN2 ...] --test".
tune-search: $(STAMP)
	$(BIN)/python scripts/tune_search.py $(ARGS)

# Kill training with SIGKILL 10 times, resume each time, compare with an uninterrupted run.
faults: $(STAMP)
	$(BIN)/python scripts/faults.py $(ARGS)

long-range: $(STAMP)
	$(BIN)/python scripts/long_range.py $(ARGS)

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir runs $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build dist
