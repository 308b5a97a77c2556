"""The four stages that decide whether a quantized candidate may ship, each against its baseline.

Each stage module has one entry point, `run(baseline_dir, candidate_dir, settings, compute) -> StageResult`;
the models run where awq_core.compute decides (the load stage leaves that to vLLM).
"""

from collections.abc import Callable
from pathlib import Path

from awq_core.compute import Compute, resolve
from validation import load_test, long_context, perplexity, tasks
from validation.result import Metric, StageResult
from validation.settings import ValidationSettings, load_settings

STAGES: dict[str, tuple[Callable[..., StageResult], str]] = {  # CLI name -> (run, settings attribute)
    "perplexity": (perplexity.run, "perplexity"),
    "tasks": (tasks.run, "tasks"),
    "long-context": (long_context.run, "long_context"),
    "load": (load_test.run, "load"),
}


def run_stage(
    name: str, baseline: str | Path, candidate: str | Path, settings: ValidationSettings, compute: Compute = Compute()
) -> StageResult:
    run, attribute = STAGES[name]
    return run(baseline, candidate, getattr(settings, attribute), resolve(compute))


__all__ = ["STAGES", "Metric", "StageResult", "ValidationSettings", "load_settings", "run_stage"]
