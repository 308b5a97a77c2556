"""The release policy: one YAML file of settings and thresholds that feeds every step."""

from dataclasses import dataclass
from pathlib import Path

from awq_core.compute import Compute
from awq_core.config import QuantConfig
from validation.settings import ValidationSettings, from_dict, read_mapping


@dataclass(frozen=True)
class CalibrationPolicy:
    texts: tuple[Path, ...] = ()  # the user's own domain texts (.txt, .jsonl)
    n_samples: int = 64
    seqlen: int = 512


@dataclass(frozen=True)
class TargetGPU:
    name: str = "H100 80GB"
    memory_gib: float = 80.0


@dataclass(frozen=True)
class Serving:
    max_model_len: int = 4096
    max_num_seqs: int = 16  # concurrent sequences whose KV cache must fit beside the weights
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    dtype: str = "float16"


@dataclass(frozen=True)
class ReleasePolicy:
    model_name: str | None = None  # default: the checkpoint folder's name
    calibration: CalibrationPolicy = CalibrationPolicy()
    quantization: QuantConfig = QuantConfig()
    compute: Compute = Compute()  # where quantization and validation run, in what precision (auto)
    validation: ValidationSettings = ValidationSettings()
    target_gpu: TargetGPU = TargetGPU()
    serving: Serving = Serving()
    base_models: dict[str, Path] | None = None  # LoRA adapters: base model name -> local folder


def load_policy(path: str | Path) -> ReleasePolicy:
    return from_dict(ReleasePolicy, read_mapping(path, "Release policy"), str(path))
