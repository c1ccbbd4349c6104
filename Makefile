# The two commands of the course: `make book` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
NOTEBOOKS := $(wildcard lessons/*.ipynb) $(wildcard exercises/*.ipynb) $(wildcard exercises/solutions/*.ipynb)
CELL_TIMEOUT ?= 300
export PYTHONHASHSEED := 0

.PHONY: help venv book test test-lib test-notebooks sync clean bench

help:
	@echo "make book   - create .venv, install pinned dependencies, build the book (HTML in _build/html)"
	@echo "make test   - library tests, notebook checks, and every notebook executed with nbval"
	@echo "make sync   - update the .ipynb twins from the .md sources and strip their outputs"
	@echo "make bench  - run the optimizer-step benchmark"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
	touch $@

book: venv
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

test: test-lib test-notebooks

test-lib: venv
	$(PY) -m pytest tests -q

test-notebooks: venv
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=$(CELL_TIMEOUT) $(NOTEBOOKS)

sync: venv
	$(BIN)/jupytext --sync $$(grep -l '^jupytext:' lessons/*.md exercises/*.md exercises/*/*.md 2>/dev/null)
	$(BIN)/jupyter nbconvert --clear-output --inplace --log-level=WARN $(NOTEBOOKS)

bench: venv
	$(PY) benchmarks/bench_optim_step.py

clean:
	rm -rf _build .jupyter_cache
