"""vLLM engine arguments: what a release ships in vllm-config.yaml, and what the load stage starts, so
that the SLA is measured on the configuration users run."""

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Serving:
    """The release policy's `serving:` section."""

    max_model_len: int = 4096
    max_num_seqs: int = 16  # concurrent sequences whose KV cache must fit beside the weights
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    dtype: str = "float16"
    # True: no CUDA graphs or torch.compile. Starts in seconds instead of a minute or more, and serves
    # more slowly: for CPU demos and tests, not for a GPU release.
    enforce_eager: bool = False
    # Where the shipped vllm-config.yaml listens: this host only, unless the operator names an
    # interface (vLLM's own default is every interface). The load stage and staging set their own.
    host: str = "127.0.0.1"


def quantization_of(model_dir: str | Path) -> str | None:
    """vLLM's --quantization for a folder: its config.json's quant_method (awq, compressed-tensors), None if dense."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return (config.get("quantization_config") or {}).get("quant_method")


def engine_args(model_dir: str | Path, served_name: str, serving: Serving) -> dict:
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
        "gpu-memory-utilization": serving.gpu_memory_utilization,
        "tensor-parallel-size": serving.tensor_parallel_size,
        **({"enforce-eager": True} if serving.enforce_eager else {}),
    }
