# The two README commands: `make demo` (the main job) and `make test` (what CI runs).
# `make lint` also plays the playbooks' scenarios and fails on a branch without one.
# Both run the idempotent set-up first, so a fresh machine needs nothing else.
VENV := .venv/bin

.PHONY: setup demo demo-ha test lint unit e2e bench compare bench-ha

setup:
	@bash .ci/setup

demo: setup
	$(VENV)/remediator demo

demo-ha: setup
	$(VENV)/remediator demo --ha

test: setup lint
	$(VENV)/pytest -q -n auto

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports
	$(VENV)/remediator validate playbooks
	$(VENV)/remediator test --coverage playbooks/tests

unit: setup
	$(VENV)/pytest -q -m "not e2e"

e2e: setup
	$(VENV)/pytest -q -m e2e

bench: setup
	$(VENV)/python bench/intake.py

compare: setup
	$(VENV)/python -m bench.compare

bench-ha: setup
	$(VENV)/python -m bench.ha
