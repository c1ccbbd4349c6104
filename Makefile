# The two commands of the course: `make book` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
# Student exercise notebooks hold stubs by design; tests/test_grading.py grades them. nbval runs the rest.
NOTEBOOKS := $(wildcard lessons/*.ipynb) $(wildcard exercises/solutions/*.ipynb)
CELL_TIMEOUT ?= 300
# Notebooks run this many at a time (nbval: one notebook per worker; the book: BOOK_EXECUTION_WORKERS).
NB_WORKERS ?= 2
export BOOK_EXECUTION_WORKERS ?= $(NB_WORKERS)
export PYTHONHASHSEED := 0
# Small models run faster on one thread, and a loaded machine does not slow them down 10x.
export OMP_NUM_THREADS ?= 1
# A claim a lesson makes about its own run fails the build and the tests when it does not hold
# (course_lib.claims); in a student's own run it shows a note instead.
export COURSE_CLAIMS := strict
# The book executes the notebooks on this machine's own CPU kernels; nbval executes them again on
# ATen's portable kernels, so every `make test` checks that no claim hangs on one path's rounding.
NBVAL_CPU_CAPABILITY ?= default

.PHONY: help venv book lab notebooks-branch test test-lib test-notebooks test-book test-portability chromium bwrap sync clean bench

help:
	@echo "make book   - create .venv, install pinned dependencies, build the book (HTML in _build/html)"
	@echo "make test   - library tests, notebook checks, and every notebook executed with nbval"
	@echo "make lab    - JupyterLab in .venv, with jupyterlab-myst: the lesson sources render roles and admonitions"
	@echo "make sync   - update the .ipynb twins from the .md sources and strip their outputs"
	@echo "make notebooks-branch - commit the generated student notebooks to the branch the Colab buttons open"
	@echo "make bench  - run the optimizer-step benchmark"
	@echo "make test-portability - run every notebook on each CPU kernel path (and GPU) here; list failed claims"

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
	@echo "The student notebooks (plain Jupyter Markdown, for JupyterLab and Colab) are in $(CURDIR)/_build/html/_notebooks/"

# JupyterLab for working from a clone. jupyterlab-myst renders the MyST of the lesson sources (roles,
# admonitions) and jupytext opens the .md sources as notebooks. A student's run: no strict claims.
LAB_ARGS ?=
lab: venv
	env -u COURSE_CLAIMS $(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

# The generated student notebooks (_build/html/_notebooks/, written by `make book`) as the branch that
# the Colab buttons open: student_notebooks_branch in _config.yml. This commits them locally, one commit
# per change; publish with `git push origin <that branch>` next to the book.
NOTEBOOKS_BRANCH = $(shell $(PY) -c "import yaml; print(yaml.safe_load(open('_config.yml'))['sphinx']['config']['student_notebooks_branch'])")
notebooks-branch: venv
	@test -f _build/html/_notebooks/README.md || { echo "No generated notebooks: run 'make book' first."; exit 1; }
	@set -e; branch="$(NOTEBOOKS_BRANCH)"; gitdir=$$(git rev-parse --absolute-git-dir); source=$$(git rev-parse --short HEAD); \
	  index=$$(mktemp -u); \
	  (cd _build/html/_notebooks && GIT_INDEX_FILE=$$index git --git-dir="$$gitdir" --work-tree=. add -A .); \
	  tree=$$(GIT_INDEX_FILE=$$index git write-tree); rm -f "$$index"; \
	  parent=$$(git rev-parse -q --verify "refs/heads/$$branch" || true); \
	  if [ -n "$$parent" ] && [ "$$(git rev-parse "$$parent^{tree}")" = "$$tree" ]; then \
	    echo "Branch $$branch already holds these notebooks."; exit 0; fi; \
	  commit=$$(git commit-tree "$$tree" $${parent:+-p "$$parent"} -m "Student notebooks generated from $$source"); \
	  git update-ref "refs/heads/$$branch" "$$commit"; \
	  echo "Branch $$branch now holds the notebooks generated from $$source. Publish: git push origin $$branch"

test: test-lib test-notebooks test-book

test-lib: venv bwrap
	$(PY) -m pytest tests -q --ignore=tests/browser

# The rendered book as a reader meets it: build it, then open every page in headless Chromium.
test-book: book chromium
	$(PY) -m pytest tests/browser -q -p no:cacheprovider

# Debian's Chromium for the browser test (installed with apt-get when missing and we are root).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
	  { echo "The browser test needs Chromium: install Debian's 'chromium' package (or set CHROMIUM=/path/to/chrome)."; exit 1; }

# bubblewrap, for the grader's sandbox option and its test (installed with apt-get when missing and we are root).
bwrap:
	@command -v bwrap >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null); } || \
	  echo "bubblewrap is not installed: the grader's sandbox test will be skipped (Debian: apt-get install bubblewrap)."

test-notebooks: venv
	ATEN_CPU_CAPABILITY=$(NBVAL_CPU_CAPABILITY) COURSE_LIB_SWEEP_WIDGETS=1 $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=$(CELL_TIMEOUT) \
	  -n $(NB_WORKERS) --dist loadfile $(NOTEBOOKS)

# Every lesson and solution on each numeric path this machine offers; writes benchmarks/results/portability.json.
test-portability: venv
	$(PY) benchmarks/portability.py --workers $(NB_WORKERS)

sync: venv
	$(BIN)/jupytext --sync $$(grep -l '^jupytext:' lessons/*.md exercises/*.md exercises/*/*.md 2>/dev/null)
	$(BIN)/jupyter nbconvert --clear-output --inplace --log-level=WARN $(NOTEBOOKS)

bench: venv
	$(PY) benchmarks/bench_optim_step.py

clean:
	rm -rf _build .jupyter_cache

# ---- GPU nodes: PyTorch installed, no internet --------------------------------------------------
# `make gpu-env` installs course_lib into GPU_PYTHON's environment beside the node's own torch,
# without touching the network: no dependencies (--no-deps), no isolated build environment that
# pip would fill from the index (--no-build-isolation: the node's setuptools builds it), no index
# at all (--no-index). `make gpu-check` does the same into a scratch environment layered over
# GPU_PYTHON's packages (nothing of GPU_PYTHON's changes), then runs benchmarks/gpu_check.py from
# outside the checkout: a shortened gpu preset, a step-time breakdown and a probe of the paper's
# shape, recorded in benchmarks/results/. Without a GPU it runs the same steps, small, on the CPU.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ENV ?= $(or $(TMPDIR),/tmp)/course-gpu-check-env
GPU_PIP_FLAGS := --no-deps --no-build-isolation --no-index --disable-pip-version-check --quiet
.PHONY: gpu-env gpu-check

gpu-env:
	@$(GPU_PYTHON) -c "import numpy, torch, setuptools, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(0 if v >= (2, 5) and int(setuptools.__version__.split('.')[0]) >= 64 else 1)" || \
	  { echo "gpu-env needs torch >= 2.5, NumPy and setuptools >= 64 in $(GPU_PYTHON)'s environment (set GPU_PYTHON=/path/to/python)."; \
	    echo "Without setuptools, course_lib also runs from this checkout as is: export PYTHONPATH=$(CURDIR)"; exit 1; }
	$(GPU_PYTHON) -m pip install $(GPU_PIP_FLAGS) -e .
	@cd / && $(GPU_PYTHON) -c "import course_lib, torch; print(f'course_lib from {course_lib.__path__[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else None}')"

gpu-check:
	$(GPU_PYTHON) benchmarks/offline_env.py $(GPU_CHECK_ENV)
	$(GPU_CHECK_ENV)/bin/python -m pip install $(GPU_PIP_FLAGS) --quiet --ignore-installed -e .
	cd $(GPU_CHECK_ENV) && ./bin/python $(CURDIR)/benchmarks/gpu_check.py --out $(CURDIR)/benchmarks/results
