# meprop_cpu developer entry points. Every target creates its own virtual
# environment in .venv (override with VENV=...) so it works on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: help venv install test test-fast sanitize demo bench bench-quick clean

help:
	@echo "make demo   - set up, fetch MNIST, train dense vs meProp, print the speed-up"
	@echo "make test   - set up and run the test-suite (fetches MNIST for the data tests)"
	@echo "make sanitize - kernel tests under AddressSanitizer + UBSan (scripts/sanitize.sh)"
	@echo "make bench  - kernel benchmarks against numpy and PyTorch (writes benchmarks/results/)"
	@echo "make bench-quick - meprop-cpu bench --quick (layers + end-to-end MNIST, vs PyTorch)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(BIN)/python

# A real (non-editable) build, as a user would get it from `pip install .`
install: venv
	$(PIP) install -q ".[test]"

# pytest runs from the venv's own script (not `python -m pytest`) so the
# source folder is not put on sys.path ahead of the installed build.
test: install
	MEPROP_TEST_NETWORK=$${MEPROP_TEST_NETWORK-1} $(BIN)/pytest -q tests

test-fast: install
	MEPROP_TEST_NETWORK=0 $(BIN)/pytest -q -m "not network and not slow" tests

# Instrumented builds in scratch copies of the sources; exits non-zero on any report.
sanitize: install
	$(PIP) install -q "Cython>=3" "setuptools>=77"
	PYTHON=$(abspath $(BIN))/python scripts/sanitize.sh

demo: install
	$(BIN)/meprop-cpu demo

bench: install
	$(PIP) install -q "torch==2.13.0" || echo "torch not installed: PyTorch rows skipped"
	$(BIN)/python benchmarks/bench_kernels.py

bench-quick: install
	$(PIP) install -q "torch==2.13.0" || echo "torch not installed: PyTorch rows skipped"
	$(BIN)/meprop-cpu bench --quick

clean:
	rm -rf build dist *.egg-info meprop_cpu/_*.c meprop_cpu/*.so .pytest_cache
