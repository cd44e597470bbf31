# finsent: `make demo` runs the main job on embedded defaults, `make test` passes the tests.
# Both create .venv and install what they need from the project's own files.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test install install-dev lint typecheck bench-model bench-pipeline clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[dev,train]'
	touch $@ $(VENV)/.installed-base

install: $(VENV)/.installed-base
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed-base
	$(BIN)/finsent demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check pipeline consumers alerts training tests bench
	$(BIN)/mypy

bench-model: $(VENV)/.installed-dev
	$(BIN)/python bench/model.py

bench-pipeline: $(VENV)/.installed-dev
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
