# The two quick-start commands: `make demo` (the main job) and `make test` (the suite).
# Both install what they need first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
DEMO_DIR ?= demo_out

.PHONY: setup demo test lint format bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

test: setup lint
	$(PY) -m pytest

lint:
	.venv/bin/lint-imports
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench: setup
	$(PY) bench/prepare.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
