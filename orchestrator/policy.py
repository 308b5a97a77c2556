"""The release policy: one YAML file of settings and thresholds that feeds every step."""

from dataclasses import dataclass
from pathlib import Path

import yaml

from awq_core.config import QuantConfig
from awq_core.errors import ValidationError
from validation.settings import ValidationSettings, from_dict


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
    validation: ValidationSettings = ValidationSettings()
    target_gpu: TargetGPU = TargetGPU()
    serving: Serving = Serving()
    base_models: dict[str, Path] | None = None  # LoRA adapters: base model name -> local folder


def load_policy(path: str | Path) -> ReleasePolicy:
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"Release policy {path} does not exist: write one (see README, 'Release policy').")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValidationError(f"Release policy {path} is not valid YAML: {e}") from e
    return from_dict(ReleasePolicy, data, str(path))
