# finsent: `make demo` runs the main job on embedded defaults, `make test` passes the tests.
# Both create .venv and install what they need from the project's own files.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test install install-dev install-gpu lint typecheck bench-model bench-pipeline clean

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

# onnxruntime (CPU, a base dependency so that a plain `pip install .` works) and
# onnxruntime-gpu ship the same module and cannot coexist: install the gpu extra, remove
# the CPU wheel, and reinstall the GPU one over the files the removal took with it.
install-gpu: $(VENV)/.installed-base
	$(PIP) install -q -e '.[gpu]'
	$(PIP) uninstall -q -y onnxruntime
	$(PIP) install -q --force-reinstall --no-deps 'onnxruntime-gpu>=1.17'

demo: $(VENV)/.installed-base
	$(BIN)/finsent demo

LINTED := finsent pipeline consumers alerts training migrations tests bench

test: lint
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy

bench-model: $(VENV)/.installed-dev
	$(BIN)/python bench/model.py

bench-pipeline: $(VENV)/.installed-dev
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
