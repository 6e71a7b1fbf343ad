# Two entry points for a fresh machine: `make demo` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast lint lint-imports venv data figures docs-images bench clean

# The package and what it imports (enough for `make demo`) ...
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# ... and what only the tests use: pytest, scikit-learn, the notebook runner, import-linter, ruff, mypy,
# and foolbox's 20 real CIFAR-10 test images (the CIFAR-10 loader's fixture).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps foolbox==3.3.4
	touch $(TEST_STAMP)

venv: $(TEST_STAMP)

# Fashion-MNIST (Debian package) is the real dataset the trainer tests use.
data:
	@test -f $(FMNIST)/t10k-labels-idx1-ubyte.gz || \
	  { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }

demo: $(STAMP)
	$(VENV)/bin/niff-analyze describe
	$(VENV)/bin/niff-analyze mass
	$(VENV)/bin/niff-analyze gaussian
	$(VENV)/bin/niff-analyze figures --out out/figures

# The import contracts of pyproject.toml: imports run downwards only.
lint-imports: $(TEST_STAMP)
	$(VENV)/bin/lint-imports

# The static checks (pyproject.toml configures each): the import contracts, ruff's linter and its
# formatter (--check: `ruff format` applies it) on the code, tests and benchmarks, and mypy on the files its [tool.mypy] section names.
LINT_PATHS := niff_analysis tests benchmarks docs/results
lint: $(TEST_STAMP) lint-imports
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

# lint first: a broken contract, a lint finding or a type error fails before the long test run.
test: $(TEST_STAMP) data lint
	$(PY) -m pytest -q

# The edit loop: everything but the tests marked slow (training, subprocesses, notebooks, ...).
test-fast: $(TEST_STAMP) data lint-imports
	$(PY) -m pytest -q -m "not slow"

# Every figure of the bundled checkpoints, side by side, into figures/ (generated, not in git).
figures: $(STAMP)
	$(VENV)/bin/niff-analyze figures niff_analysis/checkpoints --out figures

# The images the documentation shows (docs/images/), made from the bundled checkpoints: the
# figure set goes to a temporary folder and only these PNGs are kept. The ERF figure needs
# Fashion-MNIST. docs/images/mlp_decay_sweep.png comes from a sweep instead (docs/results.md).
# The controlled study's figures are drawn from their committed tables (docs/results/), not retrained
# (kernel_size_study_decay.png beside kernel_size_study.png, from the same CSV and its _scale.csv).
STUDY_IMAGES := kernel_size_study.png kernel_size_study_decay.png kernel_size_study_bn.png
DOC_IMAGES := mass_ratio.png kernel_history.png eigenkernels_zoom9_resnet18_niff_fmnist.png erf.png
docs-images: $(STAMP) data
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(VENV)/bin/niff-analyze figures resnet18_niff_fmnist resnet18_fmnist --out "$$tmp/figures" \
	    --format png --cost-sizes none -q && \
	mkdir -p docs/images && for f in $(DOC_IMAGES); do cp "$$tmp/figures/$$f" docs/images/ || exit 1; done
	$(PY) docs/results/kernel_size_study_tables.py docs/results/kernel_size_study.csv \
	    --figure docs/images/kernel_size_study.png > /dev/null
	$(PY) docs/results/kernel_size_study_bn.py docs/results/kernel_size_study_bn.csv \
	    --figure docs/images/kernel_size_study_bn.png > /dev/null

bench: venv
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
