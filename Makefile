# Two entry points for a fresh machine: `make demo` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test venv data figures bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps foolbox==3.3.4
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST (Debian package) is the real dataset the trainer tests use.
data:
	@test -f $(FMNIST)/t10k-labels-idx1-ubyte.gz || \
	  { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }

demo: venv
	$(VENV)/bin/niff-analyze describe
	$(VENV)/bin/niff-analyze mass
	$(VENV)/bin/niff-analyze gaussian
	$(VENV)/bin/niff-analyze figures --out out/figures

test: venv data
	$(PY) -m pytest -q

figures: venv
	$(VENV)/bin/niff-analyze figures niff_analysis/checkpoints --out figures

bench: venv
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
