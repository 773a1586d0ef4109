# The two commands of the README: `make demo` and `make test`. Everything they need is set up here.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssdwb-installed
DATA ?= data/shapes
# pytest workers: the machine has 2 cores.
WORKERS ?= 2

.PHONY: venv test lint demo bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --user --name ssdwb --display-name "Python (ssdwb)" >/dev/null
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -n $(WORKERS) --dist loadscope

demo: venv
	$(VENV)/bin/ssdwb demo --data $(DATA)

bench: venv
	$(PY) bench/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
