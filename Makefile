VENV ?= .venv
STAMP := $(VENV)/.sparseconv-installed

.PHONY: demo test test-all lint env

$(STAMP): pyproject.toml scripts/setup_env.sh
	VENV=$(VENV) bash scripts/setup_env.sh

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sparseconv demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

test-all: $(STAMP)
	$(VENV)/bin/pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
