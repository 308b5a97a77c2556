"""The stages by name, and running one with a compute setting and the engines that score models."""

import typing
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from awq_core.compute import Compute, Resolved, resolve
from validation import load_test, long_context, perplexity, tasks
from validation.memo import Known
from validation.result import StageResult
from validation.scoring import Engines
from validation.settings import QualityStage, StageName, ValidationSettings

# A stage's one name: the CLI's --stage, its ValidationSettings field, StageResult.stage, the lineage
# row, and the Dagster asset (NAME_validation) and gate (NAME_gate).
STAGES: dict[StageName, Callable[..., StageResult]] = {
    "perplexity": perplexity.run,
    "tasks": tasks.run,
    "long_context": long_context.run,
    "load": load_test.run,
}


def scoring_engines(settings: ValidationSettings, compute: Resolved) -> Engines:
    """The engines of settings.engine, with room for the longest request a quality stage makes; a vLLM
    server runs the load stage's serving arguments, the ones the release ships."""
    probes = settings.long_context.lengths or long_context.DEFAULT_LENGTHS
    # vLLM decodes at least one token after every prompt, and a probe's answer after its full length.
    longest = max(settings.perplexity.seqlen + 1, max(probes) + long_context.ANSWER_TOKENS)
    load = settings.load
    return Engines(settings.engine, compute, load.serving, load.log_dir, longest, load.startup_timeout_s)


def run_stage(
    name: str,
    baseline: str | Path,
    candidate: str | Path,
    settings: ValidationSettings,
    compute: Compute = Compute(),
    known: Known | None = None,
    engines: Engines | None = None,
) -> StageResult:
    """One stage; a quality stage takes the figures `known` keeps instead of measuring a model again,
    and scores through `engines` (kept by the caller for the next stage), or through engines of its
    own, stopped when it ends."""
    resolved = resolve(compute)
    if name not in typing.get_args(QualityStage):  # the load test measures a server of its own
        return STAGES[name](baseline, candidate, getattr(settings, name), resolved)
    with nullcontext(engines) if engines else scoring_engines(settings, resolved) as scoring:
        return STAGES[name](baseline, candidate, getattr(settings, name), resolved, known=known, engines=scoring)
