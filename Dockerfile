# syntax=docker/dockerfile:1
#
# abn-serve: the FastAPI service with the shipped model inside.
#
#   CPU (default):  docker build -t abn-serve .
#   CUDA:           docker build -t abn-serve:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# The install is the one `make serve` runs: a venv, then `pip install --constraint
# constraints.txt` of the project, so torch stays at the version constraints.txt pins. Two
# differences, both deliberate: torch is installed first from TORCH_INDEX_URL (the CPU or the
# CUDA build of that same pinned version; on PyPI alone Linux gets the CUDA build with
# gigabytes of libraries even for CPU serving), and the project is installed as a regular
# package without the `dev` extra (no tests, linters or editable source in a serving image).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- base: the interpreter both stages share (the venv's symlinks need the same path) -------
FROM ${BASE_IMAGE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python:3.11-slim has Python; the CUDA images (Ubuntu 24.04, Python 3.12) do not, so they get
# the distribution's python3. No version pin: the versions are whatever the base image's
# release ships, and pinning a Debian/Ubuntu revision breaks the build when the archive moves.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- builder: the virtual environment ------------------------------------------------------
FROM base AS builder
# The wheel index torch comes from: CPU by default, a CUDA index (cu128, ...) for GPU images.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# g++ compiles the bit-serial kernels below (ABN_BACKEND=auto, the default, serves them where
# the CPU runs them); the runtime stage gets only the built libraries (libstdc++ linked in
# statically), not the compiler.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --constraint constraints.txt \
        --index-url "${TORCH_INDEX_URL}" "torch==$(sed -n 's/^torch==//p' constraints.txt)"
COPY abn ./abn
COPY service ./service
COPY loadtest ./loadtest
COPY commands ./commands
RUN /opt/venv/bin/pip install --constraint constraints.txt . \
    && /opt/venv/bin/python -m abn.bitserial \
    && /opt/venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---- runtime -------------------------------------------------------------------------------
FROM base AS runtime
# The model directory baked into the image (sha256 of every file is verified at load): the
# default. To change models without a rebuild, mount a directory of models and point
# ABN_MODEL_DIR into it (compose.yaml does; Kubernetes: deploy/k8s/components/model-volume).
ARG MODEL_DIR=model_store/fmnist-abn
RUN groupadd --system --gid 10001 abn \
    && useradd --system --uid 10001 --gid abn --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin abn
COPY --from=builder /opt/venv /opt/venv
# Owned by root and read-only to the service user: the process cannot alter its own model.
COPY ${MODEL_DIR} /opt/abn/model
# Every setting is an ABN_* variable (see docs/operations.md); override with `-e` / env.
# ABN_HOST=0.0.0.0 on purpose: `abn serve` binds 127.0.0.1 unless told otherwise, which inside
# a container would refuse every connection from outside it (who can reach the port is decided
# where it is published: compose.yaml publishes it on 127.0.0.1).
ENV PATH=/opt/venv/bin:${PATH} \
    ABN_MODEL_DIR=/opt/abn/model \
    ABN_HOST=0.0.0.0 \
    ABN_PORT=8000 \
    ABN_DEVICE=auto \
    ABN_LOG_LEVEL=info
USER 10001:10001
WORKDIR /opt/abn
EXPOSE 8000
# /readyz: 200 once the model is loaded and warmed up, 503 while loading or draining. The slim
# image has no curl, so Python asks (urlopen raises on a 503: exit status 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ABN_PORT', '8000') + '/readyz', timeout=4)"]
ENTRYPOINT ["abn", "serve"]
