# The two commands of the README. Both set up .venv on first use (scripts/setup.sh).
.PHONY: demo test test-all setup lint

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/prunekit run --out runs/quickstart

test: setup
	@bash scripts/test.sh

test-all: setup
	@bash scripts/test.sh -m "slow or not slow"

lint: setup
	.venv/bin/ruff check src tests benchmarks
