# Two commands do everything on a fresh machine: `make run` and `make test`.
# The virtual environment is created on first use in .venv (Python 3.11+).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch first, on its own: pip then takes exactly this wheel (CPU machines here have it on disk;
# on a GPU workstation set TORCH_SPEC to the build you want).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CORES ?= all
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test lint dry-run clean-results help

help:
	@echo "make run     - run the default experiment (config/config.yaml); writes results/report.md"
	@echo "make test    - run the test suite"
	@echo "make lint    - snakemake --lint"
	@echo "make dry-run - show what 'make run' would do"

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11 or newer"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES)

dry-run: $(BIN)/.installed
	$(BIN)/snakemake --dry-run

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results logs benchmarks
