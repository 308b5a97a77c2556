"""vLLM engine arguments and environment: what a release ships (vllm-config.yaml and serve.sh) and
what the load stage starts, the same files, so that the SLA is measured on the configuration users run.

The serving target decides what memory means: on a GPU, vLLM takes a fraction of the GPU's memory;
vLLM's CPU build reads that same fraction as a share of host memory (and refuses to start where
less is free), so a CPU release names its KV cache size in bytes instead, and says which 4-bit path
its environment chooses.
"""

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Target = Literal["gpu", "cpu"]
LAUNCH_CONFIG = "vllm-config.yaml"
LAUNCH_SCRIPT = "serve.sh"
GiB = 2**30


@dataclass(frozen=True)
class Serving:
    """The release policy's `serving:` section."""

    max_model_len: int = 4096
    max_num_seqs: int = 16  # concurrent sequences whose KV cache must fit beside the weights
    gpu_memory_utilization: float = 0.9  # GPU target: the share of each GPU's memory vLLM takes
    tensor_parallel_size: int = 1
    dtype: str = "float16"
    # True: no CUDA graphs or torch.compile. Starts in seconds instead of a minute or more, and serves
    # more slowly: for CPU demos and tests, not for a GPU release.
    enforce_eager: bool = False
    # Where the shipped vllm-config.yaml listens: this host only, unless the operator names an
    # interface (vLLM's own default is every interface). The load stage and staging set their own.
    host: str = "127.0.0.1"
    # What the release is served on: auto is the hardware of the vLLM that load-tests it.
    target: Literal["auto", "gpu", "cpu"] = "auto"
    cpu_kv_cache_gib: float = 2.0  # CPU target: host memory for the KV cache
    # CPU target: vLLM's int8-activation path for 4-bit weights (AMX CPUs). Off, the weights are
    # served as W4A16, the arithmetic the validation stages measured.
    cpu_int4_w4a8: bool = False


def quantization_of(model_dir: str | Path) -> str | None:
    """vLLM's --quantization for a folder: its config.json's quant_method (awq, compressed-tensors), None if dense."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method")


def serving_target(serving: Serving, load_tested_on: Target | None) -> Target:
    """The policy's target, or, for auto, the hardware of the vLLM that load-tested the release; a GPU
    where that is not known (a staging deployment or a remote endpoint serves on the target GPU)."""
    return (load_tested_on or "gpu") if serving.target == "auto" else serving.target


def memory_args(serving: Serving, target: Target) -> dict:
    if target == "cpu":
        return {"kv-cache-memory-bytes": int(serving.cpu_kv_cache_gib * GiB)}
    return {"gpu-memory-utilization": serving.gpu_memory_utilization}


def engine_args(model_dir: str | Path, served_name: str, serving: Serving, target: Target) -> dict:
    """Arguments for `python -m vllm.entrypoints.openai.api_server --config FILE` (YAML keys as flags)."""
    quantization = quantization_of(model_dir)
    return {
        "model": str(model_dir),
        "served-model-name": served_name,
        "host": serving.host,
        **({"quantization": quantization} if quantization else {}),
        "dtype": serving.dtype,
        "max-model-len": serving.max_model_len,
        "max-num-seqs": serving.max_num_seqs,
        **memory_args(serving, target),
        "tensor-parallel-size": serving.tensor_parallel_size,
        **({"enforce-eager": True} if serving.enforce_eager else {}),
    }


ENV_EXPLAINED = {
    "HF_HUB_OFFLINE": "every file the server needs is in the model folder: never wait on the Hub",
    "VLLM_CPU_INT4_W4A8": "vLLM's CPU build: 0 serves 4-bit weights as W4A16, the arithmetic that was validated",
    "VLLM_CPU_KVCACHE_SPACE": "vLLM's CPU build: would override the config's kv-cache-memory-bytes",
}


def engine_env(serving: Serving, target: Target) -> dict[str, str | None]:
    """The environment vLLM starts in, what its config file cannot say: name -> value, None to unset."""
    env: dict[str, str | None] = {"HF_HUB_OFFLINE": "1"}
    if target == "cpu":
        env |= {"VLLM_CPU_INT4_W4A8": "1" if serving.cpu_int4_w4a8 else "0", "VLLM_CPU_KVCACHE_SPACE": None}
    return env


def _env_line(name: str, value: str | None) -> str:
    line = f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}"
    return f"{line}  # {ENV_EXPLAINED[name]}" if name in ENV_EXPLAINED else line


def launch_script(env: dict[str, str | None], config_name: str = LAUNCH_CONFIG) -> str:
    """serve.sh: vLLM's OpenAI-compatible server with the config file beside it, in `env`; its
    arguments go to vLLM (e.g. --port 8001). `exec` leaves no shell behind vLLM, so a signal to the
    script's process reaches the server, and the server's exit is the script's."""
    exports = [_env_line(name, value) for name, value in env.items()]
    return "\n".join(
        [
            "#!/bin/sh",
            "# Serves this model as its load test did: vLLM with the config file beside this script and the",
            "# environment below. Run it with the Python that has vLLM installed first on PATH, or set PYTHON.",
            "set -e",
            *exports,
            'here=$(cd "$(dirname "$0")" && pwd)',
            f'exec "${{PYTHON:-python}}" -m vllm.entrypoints.openai.api_server --config "$here/{config_name}" "$@"',
            "",
        ]
    )
