"""The release policy: one YAML file of settings and thresholds that feeds every step."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from awq_core.compute import Compute
from awq_core.config import QuantConfig
from awq_release.errors import ValidationError
from awq_release.settings import from_dict, parse_mapping
from deploy.engine import Serving
from validation.settings import ValidationSettings

LICENSE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")  # the Hub's licence ids: apache-2.0, llama3.1, cc-by-4.0
MAX_CALIBRATION_TOKENS = 2**24  # 16 M tokens: far beyond what AWQ and GPTQ gain from, and still fits a host


@dataclass(frozen=True)
class CalibrationPolicy:
    texts: tuple[Path, ...] = ()  # the user's own domain texts (.txt, .jsonl)
    n_samples: int = 64
    seqlen: int = 512

    def __post_init__(self):
        if self.n_samples < 1 or self.seqlen < 2 or self.n_samples * self.seqlen > MAX_CALIBRATION_TOKENS:
            raise ValidationError(
                f"calibration: n_samples={self.n_samples}, seqlen={self.seqlen}: need at least 1 window of at least "
                f"2 tokens and at most {MAX_CALIBRATION_TOKENS} tokens in all (e.g. 128 x 512)."
            )


@dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration the GPU steps' pods carry, so that they may run on tainted GPU nodes."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None  # only with operator Equal
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"  # None: every effect

    def __post_init__(self):
        if (self.operator == "Equal") != (self.value is not None):
            raise ValidationError(
                f"target_gpu.tolerations key {self.key!r}: operator Equal takes a value, Exists none; "
                f"got operator {self.operator} with value {self.value!r}."
            )


@dataclass(frozen=True)
class TargetGPU:
    """The GPU a release is served on, and, on Kubernetes, where the GPU steps run (orchestrator.pipeline.placement)."""

    name: str = "H100 80GB"
    memory_gib: float = 80.0
    per_node: int = 1  # GPUs on one node: the most tensor parallelism the footprint check may choose
    resource: str = "nvidia.com/gpu"  # the extended resource the device plugin advertises
    node_selector: dict[str, str] = field(default_factory=dict)  # e.g. {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
    tolerations: tuple[Toleration, ...] = (Toleration(key="nvidia.com/gpu"),)
    cpu: str = "8"  # what a GPU step's pod requests besides its GPU, in Kubernetes quantities
    memory: str = "64Gi"

    def __post_init__(self):
        if self.per_node < 1:
            raise ValidationError(f"target_gpu.per_node={self.per_node}: a GPU node has at least 1 GPU.")


@dataclass(frozen=True)
class CardPolicy:
    """What the release's model card says of its origin where the checkpoint does not (its README's
    front matter, its config's _name_or_path), or says otherwise."""

    license: str | None = None  # a Hub licence id, e.g. apache-2.0
    base_model: str | None = None  # the Hub model the checkpoint was fine-tuned from

    def __post_init__(self):
        if self.license is not None and not LICENSE_ID.fullmatch(self.license):
            raise ValidationError(
                f"card.license={self.license!r}: give a Hub licence id such as apache-2.0, mit or other."
            )


@dataclass(frozen=True)
class ReleasePolicy:
    model_name: str | None = None  # default: the checkpoint folder's name
    calibration: CalibrationPolicy = CalibrationPolicy()
    quantization: QuantConfig = QuantConfig()
    compute: Compute = Compute()  # where quantization and validation run, in what precision (auto)
    validation: ValidationSettings = ValidationSettings()
    target_gpu: TargetGPU = TargetGPU()
    serving: Serving = Serving()  # vLLM's engine arguments: the load stage starts them, the release ships them
    base_models: dict[str, Path] | None = None  # LoRA adapters: base model name -> local folder
    max_attempts: int = 3  # a folder whose attempts failed (or were killed) this often is not retried
    # Finished work at the same address is reused: a model quantized from the same inputs
    # (awq_core.address), a stage's figures of the same model (validation.memo), a power check of
    # the same settings and base model (validation.power). false measures and makes everything again.
    reuse: bool = True
    card: CardPolicy = CardPolicy()

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValidationError(f"max_attempts={self.max_attempts}: a folder needs at least 1 attempt.")
        if self.model_name is not None and (
            not self.model_name.strip() or len(self.model_name) > 200 or not self.model_name.isprintable()
        ):
            raise ValidationError(
                f"model_name={self.model_name!r}: name the model with 1 to 200 printable characters (any script), "
                "or leave it out to use the checkpoint folder's name."
            )


def parse_policy(text: str, source: str) -> ReleasePolicy:
    return from_dict(ReleasePolicy, parse_mapping(text, source, "Release policy"), source)


def policy_or_defaults(path: str | Path) -> ReleasePolicy:
    """The policy file as it is now, or the defaults while none exists yet: for what is decided
    outside a run (the sensor's retry limit, the GPU steps' placement), not by a run's snapshot."""
    path = Path(path)
    return parse_policy(path.read_text(), str(path)) if path.is_file() else ReleasePolicy()


def max_attempts_in(path: str | Path) -> int:
    """The retry limit the sensor applies."""
    return policy_or_defaults(path).max_attempts
