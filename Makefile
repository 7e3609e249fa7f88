# VIVA — the two commands of the README's Quick start, and a few helpers.
#
#   make run    venv + requirements, migrate, demo archive (first time), web server + worker
#   make test   venv + requirements + test tools (+ Debian's Chromium), ruff, pytest
#
# Variables: PYTHON (interpreter that creates the venv), VENV, ADDR (web server address),
# PYTEST_ARGS (e.g. make test PYTEST_ARGS="-m 'not browser' -x").

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
ADDR ?= 127.0.0.1:8000
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Stamps: requirements are reinstalled only when their files change.
RUN_STAMP := $(VENV)/.viva-run-installed
DEV_STAMP := $(VENV)/.viva-dev-installed

.PHONY: help run test lint bench install install-dev chromium migrate demo worker web

help:
	@echo "make run          start VIVA (web server + worker) on http://$(ADDR)/ with a demo archive"
	@echo "make test         install test tools and run ruff and the test suite"
	@echo "make lint         ruff check ."
	@echo "make bench        benchmarks: shots, grid (JSON lines; see docs/benchmarks.md)"
	@echo "make demo         (re)build the demo archive only"
	@echo "make install      create $(VENV) and install requirements.txt"
	@echo "make install-dev  also install requirements-dev.txt"

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "VIVA needs Python 3.11 or newer (set PYTHON=python3.11)"'
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(PY)
	$(PIP) install -qq -r requirements.txt
	@nodeps="$$(sed -n 's/^#no-deps[[:space:]]*//p' requirements.txt)"; \
	if [ -n "$$nodeps" ]; then $(PIP) install -qq --no-deps $$nodeps; fi
	@touch $@

# scenedetect's wheel requires opencv-python, which would overwrite the headless OpenCV's
# cv2 module: the `#no-deps` lines of requirements-dev.txt are installed without their
# dependencies (those are listed in the file itself).
$(DEV_STAMP): requirements.txt requirements-dev.txt $(RUN_STAMP)
	$(PIP) install -qq -r requirements-dev.txt
	@nodeps="$$(sed -n 's/^#no-deps[[:space:]]*//p' requirements-dev.txt)"; \
	if [ -n "$$nodeps" ]; then $(PIP) install -qq --no-deps $$nodeps; fi
	@touch $@

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py make_demo

run: migrate
	$(PY) manage.py make_demo --if-empty
	exec $(PY) manage.py runall --addr $(ADDR)

# Browser tests drive Debian's Chromium (Playwright never downloads a browser here).
chromium:
	@if [ -x /usr/bin/chromium ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium and chromium-driver for the browser tests"; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "NOTE: /usr/bin/chromium is missing; the browser tests need it:"; \
		echo "      sudo apt-get install chromium chromium-driver"; \
	fi

lint: install-dev
	$(PY) -m ruff check .

# ruff and pytest both run (one report for both); either failing fails the target.
# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: install-dev chromium
	@lint=0; $(PY) -m ruff check . || lint=$$?; \
	if [ $$lint -ne 0 ]; then echo "make test: ruff check failed; the tests run anyway."; fi; \
	rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing."; fi; \
	if [ $$rc -eq 0 ] && [ $$lint -ne 0 ]; then rc=$$lint; fi; \
	exit $$rc

bench: install-dev migrate
	$(PY) manage.py bench shots --json
	$(PY) manage.py bench grid --json

web: migrate
	$(PY) manage.py runserver $(ADDR) --insecure

worker: migrate
	$(PY) -m celery -A viva worker -Q default,io,gpu -c 2 -l info
