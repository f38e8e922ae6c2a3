# Thin wrappers; the real work lives in scripts/ and `python -m service`.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Where scripts/build-cluster-binaries.sh puts what it builds (outside the repo).
CACHE_DIR := $(or $(SESSION_MANAGER_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/session-manager)
CACHE_BIN := $(CACHE_DIR)/bin
# Where `make docs` builds the site: outside the repo, so nothing lands in the work tree.
DOCS_SITE ?= $(CACHE_DIR)/docs-site

.PHONY: venv binaries run serve worker test lint bench e2e manifests docs clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	touch $@

# Kubernetes 1.35, KEDA 2.20 and helm 4.3 from their Go modules, cached outside the repo (~15 min cold).
binaries:
	bash scripts/build-cluster-binaries.sh all >/dev/null

# The API and a worker on a fresh machine: on the full local stack (real kubelet, KEDA, images)
# where the machine allows it, else API-only mode; the banner says which and why.
run: venv binaries
	$(PYTHON) -m devcluster run

serve: venv
	$(PYTHON) -m service serve

worker: venv
	$(PYTHON) -m service worker

test: venv binaries lint
	$(PYTHON) -m pytest

# ruff on the code, the layers' import contract (.importlinter), actionlint on the GitHub
# workflows, hadolint on the Dockerfiles, and the docs: their generated blocks current and the
# site built strictly (a broken link between pages fails).
lint: venv binaries
	$(PYTHON) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(CACHE_BIN)/actionlint .github/workflows/*.yml
	$(VENV)/bin/hadolint Dockerfile demo_agent/Dockerfile
	$(PYTHON) scripts/docs.py --check
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir $(DOCS_SITE)

bench: venv binaries
	$(PYTHON) -m bench

# k8s-manifests/*.yaml rendered from the Helm chart in charts/session-manager (with helm from
# the build script); tests/test_chart.py fails when the two differ.
manifests: venv
	bash scripts/render-manifests.sh

# docs/ refreshed (the blocks generated from the code) and built strictly: a broken link or
# anchor between pages, or a page missing from the nav, fails (mkdocs.yml).
docs: venv
	$(PYTHON) scripts/docs.py && $(VENV)/bin/mkdocs build --strict --site-dir $(DOCS_SITE)

# The chart installed (helm install) and upgraded on kind wherever Docker can run (an engine of
# our own as root, with a node image built by scripts/build-kind.sh when kindest/node cannot be
# pulled), else on the local cluster; the suite in e2e/ against it (docs/development.md#e2e).
e2e: venv binaries
	bash e2e/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench/results
