# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target api    -t sdft-api .     # FastAPI service, no torch
#   docker build --target worker -t sdft-worker .  # Celery training worker, CUDA build of torch
#
# Dependency versions come from requirements/constraints.txt (scripts/lock-requirements.sh
# writes it from the virtualenv the test suite ran in). torch is pinned here, per target.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# Project source shared by both targets, copied after their dependency layers so that a code
# change does not reinstall packages.
FROM scratch AS source
COPY pyproject.toml README.md alembic.ini /app/
COPY sdft/ /app/sdft/
COPY api/ /app/api/
COPY worker/ /app/worker/
COPY migrations/ /app/migrations/

# ---------------------------------------------------------------------------------------------
# API build: a virtualenv with the web, database, queue and storage packages.
FROM ${PYTHON_IMAGE} AS api-build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /app
COPY requirements/ requirements/
RUN pip install -c requirements/constraints.txt -r requirements/api.txt

COPY --from=source /app/ ./
# Editable, so the code and alembic.ini/migrations/ stay together under /app, where
# `sdft db upgrade` looks for them. --no-deps keeps torch out of this image.
RUN pip install --no-deps -e .

# ---------------------------------------------------------------------------------------------
# API image: also runs the migrations (`sdft db upgrade`) as a one-shot container or Helm hook.
FROM ${PYTHON_IMAGE} AS api

RUN groupadd --system --gid 10001 sdft \
    && useradd --system --uid 10001 --gid sdft --create-home --home-dir /home/sdft sdft \
    && install -d -o sdft -g sdft /data /data/models /data/cache

COPY --from=api-build /opt/venv /opt/venv
COPY --from=api-build /app /app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SDFT_MODELS_DIR=/data/models \
    SDFT_CACHE_DIR=/data/cache

WORKDIR /app
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["sdft", "api", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# Worker image: the CUDA runtime from NVIDIA's base image, Python from Ubuntu 24.04 (3.12; the
# project supports 3.11 and later), and the CUDA build of torch installed before anything else
# so no other package resolves a different torch.
FROM ${CUDA_IMAGE} AS worker

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# Ubuntu's package versions change with every security update, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SDFT_MODELS_DIR=/data/models \
    SDFT_CACHE_DIR=/data/cache \
    HF_HUB_OFFLINE=1

RUN python3.12 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /app
COPY requirements/ requirements/
RUN pip install -c requirements/constraints.txt -r requirements/worker.txt

COPY --from=source /app/ ./
RUN pip install --no-deps -e .

RUN groupadd --system --gid 10001 sdft \
    && useradd --system --uid 10001 --gid sdft --create-home --home-dir /home/sdft sdft \
    && install -d -o sdft -g sdft /data /data/models /data/cache

USER 10001:10001

# The solo pool answers no Celery ping while a training step runs, so the check covers what a
# busy worker can still show: its interpreter starts and the broker answers.
HEALTHCHECK --interval=60s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, redis; redis.Redis.from_url(os.environ.get('SDFT_REDIS_URL', 'redis://127.0.0.1:6379/0'), socket_timeout=5).ping()"]

CMD ["sdft", "worker"]
