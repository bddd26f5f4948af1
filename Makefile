# Tessera's two user commands: `make up` (install + run) and `make test` (install + test).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_WORKERS ?= auto
# no NVIDIA GPU here: `make up` offers simulated ones (labelled simulated everywhere)
SIMULATE_GPUS ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || echo 2xA100-80GB)

.PHONY: up test test-k8s lint bench install test-deps clean k8s-testenv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# torch and Ray only where tests train (PyPI's torch is a CUDA build of several GB; pip's cache keeps
# it per machine)
TRAIN_STAMP := $(VENV)/.train-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
$(TRAIN_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,train,ray,kfp]'
	@rm -f $(VENV)/.train-* && touch $@

up: install
	$(BIN)/tessera up $(if $(SIMULATE_GPUS),--simulate-gpus $(SIMULATE_GPUS))

test-deps:
	scripts/install-test-deps

# the Kubernetes tests need the test control plane's programs (built once per machine, cached)
test: install $(TRAIN_STAMP) test-deps k8s-testenv
	TESSERA_REQUIRE_K8S=1 $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

# the Kubernetes suite alone: a real API server, scheduler, controller-manager and KWOK on loopback
test-k8s: install k8s-testenv
	TESSERA_REQUIRE_K8S=1 $(BIN)/pytest -n 2 --dist loadgroup tests/kube

# the Kubernetes test control plane's programs, built once per machine into ~/.cache
k8s-testenv:
	@scripts/k8s-testenv install >/dev/null

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install $(TRAIN_STAMP) test-deps k8s-testenv
	$(BIN)/python -m bench.api_submit
	$(BIN)/python -m bench.execution
	$(BIN)/python -m bench.scheduler
	$(BIN)/python -m bench.view
	$(BIN)/python -m bench.placement
	$(BIN)/python -m bench.elastic
	$(BIN)/python -m bench.datasets
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.k8s_scheduling
	$(BIN)/python -m bench.failover --rounds 5
	$(BIN)/python -m bench.watchfilter
	$(BIN)/python -m bench.load --db sqlite --rate 20 --out bench/results/load-sqlite
	$(BIN)/python -m bench.load --db postgres --rate 10 --out bench/results/load-postgres
	mkdir -p bench/results
	$(BIN)/python -m bench.openb_grid --jobs 2 | tee bench/results/openb.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
