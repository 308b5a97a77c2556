"""The four stages that decide whether a quantized candidate may ship, each against its baseline.

Each stage module has one entry point, `run(baseline_dir, candidate_dir, settings, compute) -> StageResult`;
the models run where awq_core.compute decides (the load stage leaves that to vLLM). The quality stages
also take `known` (validation.memo.Known): figures of models measured before, kept by the address of
all they depend on, which a retry, a later release and the power check (validation.power) find
instead of measuring a model again.

The public names load on first use: the results and settings (pure data, which the lineage database
and the history commands read) import no model stack.
"""

from awq_release.lazy import lazy_names

_HOMES = {
    "STAGES": "validation.stages",
    "run_stage": "validation.stages",
    "Metric": "validation.result",
    "StageResult": "validation.result",
    "ValidationSettings": "validation.settings",
    "load_settings": "validation.settings",
}
__all__ = list(_HOMES)

__getattr__ = lazy_names(__name__, _HOMES)
