# specdecode-operator developer entry points. Everything runs on 127.0.0.1, without Docker.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-unit test-plane lint crds cluster setup binaries system-deps clean

## demo: set up everything and run the local demo (control plane with fake GPU nodes)
demo: setup
	SPECDECODE_BIN_DIR=$$(hack/build-binaries.sh) $(BIN)/specdecode-cluster

## test: set up everything and run the whole test suite (unit + real control plane)
test: setup
	SPECDECODE_BIN_DIR=$$(hack/build-binaries.sh) $(BIN)/pytest -q tests

test-unit: $(VENV)/.installed
	$(BIN)/pytest -q tests/unit

test-plane: setup
	SPECDECODE_BIN_DIR=$$(hack/build-binaries.sh) $(BIN)/pytest -q tests/plane

## cluster: only the local control plane; prints the KUBECONFIG line; Ctrl-C stops it
cluster: setup
	SPECDECODE_BIN_DIR=$$(hack/build-binaries.sh) $(BIN)/specdecode-cluster

## crds: regenerate crds/ from the Python schema (the one source of truth)
crds: $(VENV)/.installed
	$(BIN)/python -m specdecode_operator.crd > crds/specdecode.io_specdecodedeployments.yaml

lint: $(VENV)/.installed
	$(BIN)/ruff check .

setup: system-deps $(VENV)/.installed binaries

system-deps:
	hack/install-system-deps.sh

binaries:
	hack/build-binaries.sh >/dev/null

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .plane .pytest_cache .ruff_cache
