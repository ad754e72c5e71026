# The two quick-start commands: `make demo` (the main job) and `make test` (the suite).
# Both install what they need first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
DEMO_DIR ?= demo_out

.PHONY: setup demo test test-isa lint format bench bench-peers clean

setup:
	@bash scripts/setup.sh

demo: setup
	@DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

# pytest-xdist: 2 workers (the CI machine has 2 cores; many tests wait on subprocesses and
# servers), whole test files per worker (module fixtures are built once), session fixtures
# built once per run (tests/conftest.py). The demo test trains for a fixed time budget and
# asserts what it learned, so it runs first and alone: sharing the cores with a second
# worker would cost it epochs. `make test PYTEST_WORKERS=0` runs the rest serially too.
PYTEST_WORKERS ?= 2
ALONE := tests/test_demo_report.py

test: setup lint
	$(PY) -m pytest $(ALONE); alone=$$?; \
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --ignore=$(ALONE); rest=$$?; \
	exit $$((alone || rest))

# The tests that assert what a model learnt (marker `isa`), under two CPU kernel sets: the
# AVX2 kernels and the plain, unvectorised ones, whatever this CPU's best (a test that
# holds only on the kernels it was written on fails here). Both runs must pass.
test-isa: setup
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -m isa; avx2=$$?; \
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -m isa; default=$$?; \
	exit $$((avx2 || default))

# deptry: every import is declared in pyproject.toml, not just installed because something
# else brought it in. First the shipped code against [project] and its extras ([tool.deptry]),
# then tests/ and bench/ too, with the dev extra allowed.
lint:
	.venv/bin/lint-imports
	.venv/bin/deptry .
	.venv/bin/deptry . --exclude '\.venv|venv|build|dist|docs|scripts' --ignore DEP002,DEP004
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

bench: setup
	$(PY) bench/prepare.py

# The loader beside its peers (bench/loader.py --peers), in .venv-peers: the peers' pins
# conflict with .venv's lock (bench/requirements-peers.txt). Rebuilt only when the
# requirements change (a stamp, as scripts/setup.sh does); pip's find-links (the local CPU
# torch wheel) is hidden: see bench/requirements-peers.txt. PEERS_ARGS: e.g. --tracks 256.
PEERS_PY := .venv-peers/bin/python
PEERS_STAMP := .venv-peers/.requirements.sha256
PEERS_ARGS ?=

bench-peers:
	@want=$$(cat bench/requirements-peers.txt | sha256sum | cut -d' ' -f1); \
	if [ ! -f $(PEERS_STAMP) ] || [ "$$(cat $(PEERS_STAMP))" != "$$want" ]; then \
	  echo "bench-peers: building .venv-peers (first run downloads the peers)"; \
	  [ -x $(PEERS_PY) ] || python3 -m venv .venv-peers || exit 1; \
	  $(PEERS_PY) -c "import torch, sys; sys.exit('+cpu' in torch.__version__)" 2>/dev/null \
	    || $(PEERS_PY) -m pip uninstall -y -q torch; \
	  nowheels=$$(mktemp -d); \
	  PIP_FIND_LINKS=$$nowheels $(PEERS_PY) -m pip install -q --disable-pip-version-check \
	    -r bench/requirements-peers.txt || exit 1; \
	  echo "$$want" > $(PEERS_STAMP); \
	fi
	$(PEERS_PY) bench/loader.py --peers --sources local,s3 $(PEERS_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
