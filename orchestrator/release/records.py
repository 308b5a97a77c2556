"""What each asset hands the next: lineage row ids and paths, never a model.

Dagster's IO manager stores these few fields per partition, so a downstream asset re-materialized
alone in the UI gets exactly what its upstream last produced, without asking the database again.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointRecord:
    id: int  # checkpoints row
    name: str  # the dynamic partition key
    model_dir: str  # the full checkpoint to quantize: the dropped folder, or base + merged LoRA
    weights_fingerprint: str  # of the weights ingest checked finite: quantize need not read them for that
    content_hash: str  # sha256 of the folder's names and bytes: part of every result's address
    tensor_parallel_size: int = 1  # GPUs the release is served on: the footprint check's choice


@dataclass(frozen=True)
class CalibrationRecord:
    id: int  # calibration_sets row
    checkpoint: CheckpointRecord
    tokens_path: str  # (N, L) token ids, safetensors
    tokens_hash: str


@dataclass(frozen=True)
class CandidateRecord:
    id: int  # quantization_runs row
    checkpoint: CheckpointRecord  # the baseline every stage compares against
    model_dir: str  # the quantized checkpoint
    output_hash: str  # its tensors, config and side files: the candidate's identity in every stage's address
    plot: str | None = None  # PNG of the quantization error per block, for the UI and the model card


@dataclass(frozen=True)
class StageRecord:
    id: int  # validation_stages row
    stage: str
    quantization_run_id: int
    status: str  # passed | failed | skipped
    reasons: tuple[str, ...]
    plot: str | None = None  # PNG of what the stage measured, where it has one (long context, load)


@dataclass(frozen=True)
class PowerCheckRecord:
    quantization_run_id: int
    outcome_ids: tuple[int, ...]  # power_check_outcomes rows; () when the policy does not run the check
    caught: int  # planted damages some stage caught
    planted: int
