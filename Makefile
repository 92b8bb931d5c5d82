# sodlab: two commands on a fresh machine.
#   make demo  - set up .venv, make the embedded dataset, run every notebook (quick), write reports/index.html
#   make test  - set up .venv, then the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SIZE   ?= quick
SEED   ?= 0

.PHONY: demo test setup data notebooks bench lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

data: setup
	$(PY) -m sodlab data make --size $(SIZE) --seed $(SEED)

notebooks: data
	$(PY) -m sodlab notebooks --quick --data data/synth/$(SIZE)-seed$(SEED)

demo: notebooks
	@echo "report: reports/index.html"

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check sodlab tests notebooks

bench: setup
	$(PY) -m sodlab bench

clean:
	rm -rf reports runs data/synth
