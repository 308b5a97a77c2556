"""The four stages that decide whether a quantized candidate may ship, each against its baseline.

Each stage module has one entry point, `run(baseline_dir, candidate_dir, settings) -> StageResult`.
"""

from collections.abc import Callable
from pathlib import Path

from validation import load_test, long_context, perplexity, tasks
from validation.result import Metric, StageResult
from validation.settings import ValidationSettings, load_settings

STAGES: dict[str, tuple[Callable[..., StageResult], str]] = {  # CLI name -> (run, settings attribute)
    "perplexity": (perplexity.run, "perplexity"),
    "tasks": (tasks.run, "tasks"),
    "long-context": (long_context.run, "long_context"),
    "load": (load_test.run, "load"),
}


def run_stage(name: str, baseline: str | Path, candidate: str | Path, settings: ValidationSettings) -> StageResult:
    run, attribute = STAGES[name]
    return run(baseline, candidate, getattr(settings, attribute))


__all__ = ["STAGES", "Metric", "StageResult", "ValidationSettings", "load_settings", "run_stage"]
