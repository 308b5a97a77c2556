"""The four stages that decide whether a quantized candidate may ship, each against its baseline.

Each stage module has one entry point, `run(baseline_dir, candidate_dir, settings, compute) -> StageResult`;
the models run where awq_core.compute decides (the load stage leaves that to vLLM). The quality stages
also take `known`, figures of models they measured before (validation.models.measure_both), which is
how the power check (validation.power) measures its baseline once for every damaged copy.
"""

from collections.abc import Callable
from pathlib import Path

from awq_core.compute import Compute, resolve
from validation import load_test, long_context, perplexity, tasks
from validation.result import Metric, StageResult
from validation.settings import ValidationSettings, load_settings

# A stage's one name: the CLI's --stage, its ValidationSettings field, StageResult.stage, the lineage
# row, and the Dagster asset (NAME_validation) and gate (NAME_gate).
STAGES: dict[str, Callable[..., StageResult]] = {
    "perplexity": perplexity.run,
    "tasks": tasks.run,
    "long_context": long_context.run,
    "load": load_test.run,
}


def run_stage(
    name: str, baseline: str | Path, candidate: str | Path, settings: ValidationSettings, compute: Compute = Compute()
) -> StageResult:
    return STAGES[name](baseline, candidate, getattr(settings, name), resolve(compute))


__all__ = ["STAGES", "Metric", "StageResult", "ValidationSettings", "load_settings", "run_stage"]
