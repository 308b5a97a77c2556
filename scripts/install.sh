#!/usr/bin/env bash
# The platform's own install, shared by scripts/setup.sh (a machine) and the Dockerfile (an image):
# .venv with the project, its serving engine, and the extras of every executor beyond one process:
# celery (dagster-celery, redis), docker (dagster-docker), k8s (dagster-k8s, dagster-postgres).
# AWQ_RELEASE_ENGINE=gpu installs CUDA vLLM instead of the CPU build: an install choice, no code change.
# AWQ_RELEASE_EDITABLE=0 installs a copy (images); the default is an editable install (a checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${AWQ_RELEASE_ENGINE:-cpu}"
extras="$engine,celery,docker,k8s${AWQ_RELEASE_EXTRAS:+,$AWQ_RELEASE_EXTRAS}"
[ -x .venv/bin/python ] || python3 -m venv .venv
if [ "${AWQ_RELEASE_EDITABLE:-1}" = 1 ]; then
    .venv/bin/pip install -q -e ".[$extras]"
else
    .venv/bin/pip install -q ".[$extras]"
fi
# vLLM's dependencies pull CUDA builds of these; on a CPU torch they break transformers imports.
if [ "$engine" = cpu ]; then .venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec; fi
