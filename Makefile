# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install torch 2.13.0 and sparsegrain, make sure Fashion-MNIST is
#                 there, and run a short Campfire sparse training with its report
#   make test   - install the test extras and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= /usr/share/datasets/fashion-mnist
DEMO_OUT ?= runs/demo

.PHONY: demo test test-fast lint data venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]' torch==2.13.0
	touch $@

# Debian's dataset-fashion-mnist package puts the IDX files in $(DATA). Install it when missing
# and apt is usable; otherwise say how to point the loader at IDX files.
data:
	@if ls $(DATA)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  echo "Fashion-MNIST found in $(DATA)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist || \
	    (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo apt-get install -y -q dataset-fashion-mnist || \
	    (sudo apt-get update -q && sudo apt-get install -y -q dataset-fashion-mnist); \
	else \
	  echo "Fashion-MNIST IDX files are not in $(DATA) and apt-get cannot install them here."; \
	  echo "Install Debian's package 'dataset-fashion-mnist', or put the four IDX files"; \
	  echo "(train-images-idx3-ubyte[.gz], ...) in a directory and run: make demo DATA=that/dir"; \
	  exit 1; \
	fi

demo: venv data
	$(BIN)/sparsegrain train --recipe recipes/demo.yaml --out $(DEMO_OUT) --overwrite \
	  --set data.root=$(DATA)

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest

# The suite without the tests marked slow (torchrun, kill-and-resume, sweeps): for quick loops.
test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
