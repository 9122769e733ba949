# The two commands of the README:
#   make demo   - broker, worker, sink, simulator and dashboard, on a fresh machine
#   make test   - lint (ruff, mypy) and the whole test suite (what CI runs)
# Each installs only what it needs: `make setup` (the demo's) a virtualenv
# with the project and its runtime dependencies; `make setup-test` (the
# tests') adds the test tools (.[test]) and the Debian packages of the
# browser tests and the compose checks. Versions come from constraints.txt
# (what the suite passes with), the same pins the Dockerfile installs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Debian packages the tests need: chromium and a CJK font for the browser
# tests and screenshots, docker-compose to validate docker-compose.yml
# without an engine. The demo needs none of them.
TEST_APT_PACKAGES := chromium fonts-wqy-microhei docker-compose
# Test processes (pytest-xdist): most tests wait on a broker, a worker or a
# browser, so two share two cores well. Each has its own broker; a file's
# tests stay in one process (--dist loadfile) and share its fixtures. Tests
# marked solo (timed in event time against a fast replay) run after, alone.
TEST_WORKERS ?= 2
# Never put the repository root on sys.path: its tables/ folder must not
# shadow PyTables (our code is imported as ctower.tables).
export PYTHONSAFEPATH := 1

.PHONY: setup setup-test system-packages demo test lint schemas constraints bench \
	bench-decisions clean

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e .
	touch $(STAMP)

setup-test: $(TEST_STAMP) system-packages

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(TEST_STAMP)

system-packages:
	@missing=""; for p in $(TEST_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(BIN)/ctower demo

test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not solo"
	$(BIN)/pytest -m solo

# mypy checks the package as it is imported, ctower.*, but follows no import
# hook, so it cannot see the editable install's mapping of ctower.tables to
# tables/ (pyproject's [tool.setuptools.package-dir]). MYPY_TREE spells that
# mapping in symlinks ([tool.mypy] mypy_path points at it), rebuilt each run
# so a new module is never missed; sed names the real files in mypy's
# messages. Its cache is under the virtualenv: a run after a small change
# takes a few seconds, a cold one (CI) about half a minute.
MYPY_TREE := $(VENV)/mypy-tree
# The top-level folders installed as ctower.<folder>: tables, streams, ...
PACKAGE_FOLDERS := $(shell grep -oP '^"ctower\.\w+" = "\K\w+(?=")' pyproject.toml)
empty :=
space := $(empty) $(empty)

lint: setup-test
	$(BIN)/ruff check .
	@rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/ctower
	@ln -s $(CURDIR)/ctower/* $(MYPY_TREE)/ctower/
	@for d in $(PACKAGE_FOLDERS); do ln -s $(CURDIR)/$$d $(MYPY_TREE)/ctower/$$d; done
	set -o pipefail; $(BIN)/mypy | sed -E \
	  -e 's#^$(MYPY_TREE)/ctower/($(subst $(space),|,$(PACKAGE_FOLDERS)))/#\1/#' \
	  -e 's#^$(MYPY_TREE)/##'

# The published contracts: JSON Schema of every event and control record
# (schemas/json/) and the coupon API's OpenAPI document, from the code.
schemas: setup
	$(BIN)/ctower schemas --write

# Re-pin constraints.txt to what the virtualenv holds now (after a change of
# dependencies in pyproject.toml, once the suite passes with it).
constraints: setup-test
	{ grep '^#' $(CONSTRAINTS); $(BIN)/pip freeze --exclude-editable | grep -v '^#' \
	  | grep -iv '^ctower=='; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

bench: setup
	$(BIN)/ctower bench

bench-decisions: setup
	$(BIN)/ctower bench decisions

clean:
	-$(BIN)/ctower kafka down
	rm -rf $(VENV) .pytest_cache .ruff_cache
