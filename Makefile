# Alliance: the two commands are `make run` and `make test`; everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/alliance/v1/*.proto)
TOOLS_STAMP := $(VENV)/.tools-installed
GEN_STAMP := gen/alliance/.generated
INSTALL_STAMP := $(VENV)/.installed

.PHONY: help install proto run test test-unit bench lint fmt lock deploy-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# protoc comes from grpcio-tools, so it is installed before the rest of the project.
$(TOOLS_STAMP): constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt grpcio-tools mypy-protobuf
	touch $@

$(GEN_STAMP): $(PROTOS) $(TOOLS_STAMP)
	rm -rf gen/alliance && mkdir -p gen
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen \
		--mypy_out=gen --mypy_grpc_out=gen $(PROTOS)
	touch gen/alliance/__init__.py gen/alliance/v1/__init__.py gen/alliance/py.typed
	touch $@

$(INSTALL_STAMP): pyproject.toml constraints.txt $(GEN_STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(INSTALL_STAMP) ## create .venv and install the suite with its tools

proto: $(GEN_STAMP) ## generate gen/alliance/v1 from protos/

run: install ## run NATS and every service on SQLite (data in var/), rules from rules/; Ctrl-C stops
	$(BIN)/alliance run

test: install ## run the whole test suite (real NATS, gRPC, SQLite and PostgreSQL)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-unit: install ## only the fast unit tests
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

bench: install ## measure the speed targets against an empty gRPC call in the same run
	$(BIN)/python -m bench

lint: install ## ruff, rule files, Kubernetes manifests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/alliance rules validate rules/
	$(MAKE) --no-print-directory deploy-check

fmt: install ## format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

deploy-check: install ## render every kustomize overlay and validate it offline
	@for o in deploy/overlays/*/; do \
		echo "validating $$o"; \
		kubectl kustomize $$o | $(BIN)/kubernetes-validate --strict - || exit 1; \
	done

lock: $(BIN)/python ## refresh constraints.txt from what is installed
	{ echo "# Versions the suite is tested with; the Makefile installs with -c constraints.txt. Refresh: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^alliance'; } > constraints.txt

clean: ## remove the venv, generated code and local data
	rm -rf $(VENV) gen var .pytest_cache .ruff_cache
