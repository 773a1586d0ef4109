# The two commands of the README: `make demo` and `make test`. Everything they need is set up here.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssdwb-installed
DATA ?= data/shapes
# pytest workers: the machine has 2 cores.
WORKERS ?= 2
# the slowest tests make test lists (0: all of them)
DURATIONS ?= 25

NBVAL := build/nbval
# Debian packages the tests need: chromium (tests/test_browser.py), slurm-wlm and munge (the
# local Slurm cluster, tests/slurm_cluster.py), shellcheck (tests/test_slurm.py). `make
# system-deps` installs them when missing and we are root (CI); the tests never install
# anything: without them they skip and say why.
SYSTEM_PACKAGES := chromium slurm-wlm munge shellcheck

.PHONY: venv test lint demo bench clean system-deps notebooks-prepare

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name ssdwb --display-name "Python (ssdwb)" >/dev/null
	@# The kernel lives in the venv (each checkout runs its notebooks in its own environment). An
	@# older `make` put it in the user's folder: remove that one once its Python is gone.
	@user_kernel="$$($(VENV)/bin/jupyter --data-dir)/kernels/ssdwb"; \
	if [ -f "$$user_kernel/kernel.json" ]; then \
		py="$$($(PY) -c 'import json, sys; print(json.load(open(sys.argv[1]))["argv"][0])' \
			"$$user_kernel/kernel.json" 2>/dev/null)"; \
		if [ -n "$$py" ] && ! command -v "$$py" >/dev/null; then \
			echo "removing $$user_kernel: its Python $$py no longer exists"; rm -rf "$$user_kernel"; \
		fi; \
	fi
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
		|| echo "could not install$$missing: the tests that need them will skip"; \
	else echo "not root: not installing$$missing; the tests that need them will skip"; fi

# The notebooks with small parameters (tests/nbval_prepare.py), then every test and notebook.
# --dist loadscope keeps the cells of one notebook on one worker.
notebooks-prepare: venv
	rm -rf $(NBVAL)
	$(PY) tests/nbval_prepare.py $(NBVAL)

test: lint system-deps notebooks-prepare
	$(PY) -m pytest -n $(WORKERS) --dist loadscope tests $(NBVAL) \
		--nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		--durations=$(DURATIONS)

demo: venv
	$(VENV)/bin/ssdwb demo --data $(DATA)

bench: venv
	$(PY) bench/bench_core.py
	$(PY) bench/bench_data.py --stages

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build
