# Two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench migrate user token package clean-data

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) scripts/run.py

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) scripts/bench.py

migrate: $(STAMP)
	$(PY) scripts/manage.py migrate

user: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make user NAME=alice PASSWORD=..."; exit 2; }
	@PASSWORD='$(PASSWORD)' $(PY) scripts/manage.py user '$(NAME)'

token: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make token NAME=alice"; exit 2; }
	@$(PY) scripts/manage.py token '$(NAME)'
