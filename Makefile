# Thin wrappers; the real work lives in scripts/ and `python -m service`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: venv apiserver run serve worker test lint bench e2e clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	touch $@

# kube-apiserver from Debian's kubernetes source package, cached outside the repo.
apiserver:
	bash scripts/build-kube-apiserver.sh >/dev/null

# Serve the API (and a worker) on a fresh machine: local Redis and API server when none is configured.
run: venv apiserver
	$(PYTHON) -m service dev

serve: venv
	$(PYTHON) -m service serve

worker: venv
	$(PYTHON) -m service worker

test: venv apiserver
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

lint: venv
	$(PYTHON) -m ruff check .

bench: venv apiserver
	$(PYTHON) -m bench

e2e:
	bash e2e/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench/results
