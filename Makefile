# The two commands of the README:
#   make demo   - broker, worker, sink, simulator and dashboard, on a fresh machine
#   make test   - the whole test suite (what CI runs)
# Everything a fresh machine lacks is installed by `make setup`, which both run.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages: chromium and a CJK font for the browser tests and
# screenshots, docker-compose to validate docker-compose.yml without an engine.
APT_PACKAGES := chromium fonts-wqy-microhei docker-compose
# Never put the repository root on sys.path: its tables/ folder must not
# shadow PyTables (our code is imported as ctower.tables).
export PYTHONSAFEPATH := 1

.PHONY: setup system-packages demo test lint bench bench-decisions clean

setup: $(STAMP) system-packages

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(BIN)/ctower demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/ctower bench

bench-decisions: setup
	$(BIN)/ctower bench decisions

clean:
	-$(BIN)/ctower kafka down
	rm -rf $(VENV) .pytest_cache .ruff_cache
