"""A release's manifest.json: where it came from, how it was made and what its gates measured."""

from pathlib import Path

from orchestrator.lineage.models import ValidationStage
from orchestrator.lineage.queries import Lineage
from orchestrator.lineage.rows import metric_record, power_check_record
from orchestrator.release.hashing import file_hash
from orchestrator.release.snapshots import PolicySnapshot


def _validation(row: ValidationStage) -> dict:
    metrics = {m.metric: metric_record(m) for m in row.metrics}
    return {
        "status": row.status,
        "passed": row.passed,
        "reasons": row.reasons,
        "compute": row.compute,
        "metrics": metrics,
    }


def build_manifest(model: str, version: str, release_id: int, chain: Lineage, policy: PolicySnapshot) -> dict:
    """`policy` is the release run's snapshot; the quantization run's own is under quantization."""
    checkpoint, calibration, run = chain.checkpoint, chain.calibration, chain.run
    output = Path(run.output_path)
    return {
        "model": model,
        "version": version,
        "release_id": release_id,
        "checkpoint": {
            "id": checkpoint.id,
            "name": checkpoint.name,
            "content_hash": checkpoint.content_hash,
            "base_model": checkpoint.base_model,
            "adapter": checkpoint.adapter_path,
        },
        "calibration": {
            "id": calibration.id,
            "tokens_hash": calibration.tokens_hash,
            "n_samples": calibration.n_samples,
            "seqlen": calibration.seqlen,
            "sources": calibration.source_hashes,
        },
        "quantization": {
            "id": run.id,
            "settings": run.settings,
            "output_hash": run.output_hash,
            "policy_hash": chain.policy.hash if chain.policy else None,
            "seconds": run.seconds,
        },
        "files": {p.name: file_hash(p) for p in sorted(output.iterdir()) if p.is_file()},
        "validation": {stage: _validation(row) for stage, row in chain.stages.items()},
        "power_check": power_check_record(chain.power_check),
        "policy": {"id": policy.id, "hash": policy.hash, "text": policy.text},
    }
