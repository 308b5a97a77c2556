"""The stages by name, and running one with a compute setting."""

import typing
from collections.abc import Callable
from pathlib import Path

from awq_core.compute import Compute, resolve
from validation import load_test, long_context, perplexity, tasks
from validation.memo import Known
from validation.result import StageResult
from validation.settings import QualityStage, StageName, ValidationSettings

# A stage's one name: the CLI's --stage, its ValidationSettings field, StageResult.stage, the lineage
# row, and the Dagster asset (NAME_validation) and gate (NAME_gate).
STAGES: dict[StageName, Callable[..., StageResult]] = {
    "perplexity": perplexity.run,
    "tasks": tasks.run,
    "long_context": long_context.run,
    "load": load_test.run,
}


def run_stage(
    name: str,
    baseline: str | Path,
    candidate: str | Path,
    settings: ValidationSettings,
    compute: Compute = Compute(),
    known: Known | None = None,
) -> StageResult:
    """One stage; a quality stage takes the figures `known` keeps instead of measuring a model again."""
    quality = {"known": known} if name in typing.get_args(QualityStage) else {}  # the load test measures a server
    return STAGES[name](baseline, candidate, getattr(settings, name), resolve(compute), **quality)
