# pneumocxr: two commands do everything on a fresh machine (Python 3.11, Linux):
#   make demo    create .venv, install pinned deps, run the whole pipeline on the embedded demo
#   make test    create .venv, install pinned deps, run the test suite (what CI runs)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
SMK    := $(BIN)/snakemake --profile workflow/profiles/local --cores $(CORES)
# Snakemake's HTML report (every figure, its caption and params), written after the run
REPORT := --report-after-run --report results/report.html
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo run test lint dvc.yaml dvc-demo dag clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)  ## whole pipeline on the synthetic demo data (offline, minutes on 2 cores)
	$(SMK) all --configfile config/demo.yaml $(REPORT)

run: $(STAMP)  ## whole pipeline on real data at data/raw/chest_xray (params.yaml)
	$(SMK) all $(REPORT)

test: $(STAMP)  ## unit tests, workflow checks and the end-to-end demo run
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakefmt --check Snakefile workflow/rules

dvc.yaml: $(STAMP)  ## regenerate dvc.yaml and workflow/envs from the Snakefile and pins
	$(BIN)/python -m pneumocxr.workflow_sync

dvc-demo: $(STAMP)  ## the demo through DVC: overlay -> `dvc exp run -S ...` (README's line)
	$(BIN)/dvc exp run $$($(BIN)/pneumocxr params --overlay config/demo.yaml --dvc-set)

dag: $(STAMP)  ## redraw docs/rulegraph.png and docs/dvc_dag.png (matplotlib; no Graphviz needed)
	$(BIN)/snakemake all --rulegraph --configfile config/demo.yaml | $(BIN)/python docs/render_dag.py --title "Snakemake rule graph (snakemake all --rulegraph)" -o docs/rulegraph.png
	$(BIN)/dvc dag --dot | $(BIN)/python docs/render_dag.py --title "DVC stages (dvc dag): one per Snakemake job; with real data, make_demo stands apart" -o docs/dvc_dag.png

clean:  ## remove pipeline outputs (not the venv, not the DVC cache)
	rm -rf data/processed data/demo results/* logs benchmarks .snakemake
