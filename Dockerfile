# syntax=docker/dockerfile:1
#
# One image for the videoqueue worker (the default command), Flower and the provider
# simulator. No secret is baked in: settings come from the environment at run time.
#
#   docker build -t videoqueue .
#   docker run --env-file .env videoqueue                                   # a worker
#   docker run videoqueue celery -A worker flower --port=5555               # Flower
#   docker run videoqueue python -m simulator --host 0.0.0.0 --port 8000    # the simulator
#
# docker-compose.yml runs all of them; docs/production.md explains the stack.

# The base image by digest, so that every build starts from the same bytes: the multi-arch
# index digest of python:3.11-slim (Debian bookworm), as pinned by several public
# repositories when it was written here (Docker Hub was not reachable). Refresh it on purpose,
# for security updates, with `docker buildx imagetools inspect python:3.11-slim` (its
# "Digest:" line), then rebuild and run the tests.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# An unprivileged user (numeric, so Kubernetes' runAsNonRoot can verify it) and /data, the
# one writable place (Flower's state; a local STORAGE_URL). A named volume mounted on /data
# starts out with this ownership.
RUN groupadd --system --gid 10001 videoqueue \
    && useradd --system --uid 10001 --gid videoqueue --create-home --home-dir /home/videoqueue \
        --shell /usr/sbin/nologin videoqueue \
    && mkdir -p /data \
    && chown videoqueue:videoqueue /data

WORKDIR /app

# Dependencies first, from requirements.lock alone: every package the image runs (the base
# dependencies and the `worker` extra, as `pip install "videoqueue[worker]"`, plus the
# build backend) at the exact version and file hashes `make lock` resolved from
# pyproject.toml. A package whose bytes differ from the lock fails the build; nothing is
# resolved at build time. This layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps --requirement requirements.lock

# Then the source, installed without its dependencies (they are in the layer above) and
# built with the locked setuptools (no build isolation: it would fetch an unpinned one).
COPY . .
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info

USER 10001:10001

# The worker is healthy when its own node answers a ping through the broker. Its node name
# is "${WORKER_NAME:-worker}@<container hostname>", the same expression as in CMD below, so
# this works for every replica of `docker compose up --scale worker=N` and for any
# WORKER_NAME. The other services of docker-compose.yml (Flower, ...) set their own.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A worker inspect ping --timeout 10 --destination ${WORKER_NAME:-worker}@${HOSTNAME:-$(hostname)} > /dev/null || exit 1"]

# A worker consuming every queue. `exec` makes celery the process that receives SIGTERM
# (warm shutdown: finish running tasks, hand held countdown messages back to Redis).
# WORKER_POOL (default: prefork), WORKER_CONCURRENCY (default: one per CPU) and
# WORKER_QUEUES (default: all) are optional; docker-compose.yml runs submits and polls on a
# thread pool and stores on prefork (docs/benchmarks.md, "Which pool").
CMD ["sh", "-c", "exec celery -A worker worker --loglevel=${LOG_LEVEL:-INFO} --hostname=${WORKER_NAME:-worker}@%h ${WORKER_POOL:+--pool=$WORKER_POOL} ${WORKER_CONCURRENCY:+--concurrency=$WORKER_CONCURRENCY} ${WORKER_QUEUES:+--queues=$WORKER_QUEUES}"]
