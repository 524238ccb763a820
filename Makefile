# Two commands do everything on a fresh machine: `make run` and `make test`.
# The virtual environment is created on first use in .venv (Python 3.11+).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# torch first, on its own: pip then takes exactly this wheel (CPU machines here have it on disk;
# on a GPU workstation set TORCH_SPEC to the build you want).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Everything else is pinned in requirements-lock.txt, as pip constraints (what is installed still
# comes from pyproject.toml and EXTRAS); `make lock` rewrites it. LOCK= installs the newest versions
# pyproject.toml allows instead (e.g. for a torch version whose own requirements differ from the lock's).
LOCK ?= requirements-lock.txt
EXTRAS ?= test,lint,kaggle,slurm,docs
CONSTRAINTS = $(if $(LOCK),-c $(LOCK))
CORES ?= all
export PATH := $(BIN):$(PATH)

.PHONY: run test lint format docs lock dry-run pull push plots metrics have-env clean-results help

help:
	@echo "make run     - run the default experiment (config/config.yaml); writes results/report.md"
	@echo "make test    - run the test suite"
	@echo "make lint    - snakemake --lint, ruff check, snakefmt --check"
	@echo "make format  - let ruff and snakefmt fix what make lint finds"
	@echo "make docs    - build the documentation site into site/ (mkdocs build --strict: warnings fail it)"
	@echo "make lock    - rewrite requirements-lock.txt from a fresh environment (the newest allowed versions)"
	@echo "make dry-run - show what 'make run' would do"
	@echo "make push    - record the outputs in dvc.lock and upload them to the DVC remote"
	@echo "make pull    - download the outputs of dvc.lock and mark them up to date (no training)"
	@echo "make plots   - dvc plots show into results/dvc_plots/index.html, a page that works offline"
	@echo "make metrics - the DVC metrics as a table: one row per setting and method, mAP and AUROC mean ± SD"

$(BIN)/.installed: pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11 or newer"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade $(CONSTRAINTS) pip
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES)

dry-run: $(BIN)/.installed
	$(BIN)/snakemake --dry-run

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# All three run, and any one failing fails the target.
lint: $(BIN)/.installed
	@status=0; \
	echo "snakemake --lint"; $(BIN)/snakemake --lint || status=1; \
	echo "ruff check src tests scripts"; $(BIN)/ruff check src tests scripts || status=1; \
	echo "snakefmt --check workflow"; $(BIN)/snakefmt --check workflow || status=1; \
	exit $$status

format: $(BIN)/.installed
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/snakefmt workflow

# The command and configuration references are generated during the build (docs/gen_reference.py).
# The two variables silence banners that mkdocs' plugins print about mkdocs' future (not warnings).
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict --quiet

lock:
	PYTHON='$(PYTHON)' TORCH_SPEC='$(TORCH_SPEC)' EXTRAS='$(EXTRAS)' scripts/lock

# Outputs recorded in dvc.lock come back byte for byte; Snakemake's timestamps cannot be switched
# off, so --touch marks them up to date, and the dry run must then plan nothing.
# pull and push only install when there is no environment yet: they never reinstall an existing one
# (make would, for an order-only prerequisite whose pyproject.toml is newer, as in a fresh clone).
have-env:
	@test -f $(BIN)/.installed || $(MAKE) --no-print-directory $(BIN)/.installed

# dvc fetch into the cache first: a remote that lacks any output of dvc.lock stops here, in one line
# naming it, before anything in the workspace is touched; then dvc checkout puts the files in place.
pull: have-env
	@$(BIN)/fedmlp dvc-fetch
	$(BIN)/dvc checkout
	$(BIN)/snakemake --cores 1 --touch --forceall --quiet
	@$(BIN)/snakemake --dry-run > .snakemake-pull-check.log 2>&1; \
	if grep -q "Nothing to be done" .snakemake-pull-check.log; then echo "make pull: all outputs present and up to date"; rm -f .snakemake-pull-check.log; \
	else cat .snakemake-pull-check.log; echo "make pull: error: Snakemake would still run jobs (above); dvc.lock does not match this config"; exit 1; fi

push: have-env
	$(BIN)/dvc commit --force
	$(BIN)/dvc push
	@echo "make push: outputs uploaded; commit dvc.lock so that others can 'make pull' them"

# DVC's views, readable and offline (docs/reports.md, "DVC views"); they only read the workspace.
plots: have-env
	@$(BIN)/fedmlp plots

metrics: have-env
	@$(BIN)/fedmlp metrics

clean-results:
	rm -rf results logs benchmarks resume
