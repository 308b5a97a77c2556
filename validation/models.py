"""Load the baseline (dense) and the candidate (AWQ, through awq_core's loader) the same way, on
the compute device and in the compute dtype (awq_core.compute decides both), or score both through
the engine the policy chose (validation.scoring)."""

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoModelForCausalLM

from awq_core.checkpoint import CheckpointFolder
from awq_core.compute import Resolved, resolve
from awq_core.loader import load_quantized
from validation.memo import Known, plain, stage_scope
from validation.scoring import Engines, Scorer


def load_model(model_dir: str | Path, compute: Resolved | None = None) -> nn.Module:
    """An AWQ checkpoint through awq_core's loader (kernels.AWQLinear), anything else through transformers."""
    compute = compute or resolve()
    CheckpointFolder(model_dir)  # clear errors for a broken folder
    quantized = "quantization_config" in json.loads((Path(model_dir) / "config.json").read_text())
    if quantized:
        return load_quantized(model_dir, compute)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute.dtype, trust_remote_code=False)
    return dense.to(compute.device).eval()


# A stage's figures of one model come unit by unit (a task, a text, a context length): each unit's
# gates depend on that unit alone.
Units = Iterator[tuple[str, Any]]
# (unit, the baseline's figures of it, the candidate's) -> whether that unit's gate failed outright.
Failed = Callable[[str, Any, Any], bool]


def measure_both(
    baseline: str | Path,
    candidate: str | Path,
    stage: str,
    settings: Any,
    measure: Callable[[Scorer, str], Units],
    compute: Resolved,
    known: Known | None,
    failed: Failed | None,
    engines: Engines,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({"baseline": {unit: ...}, "candidate": {unit: ...}}, the roles whose figures were measured
    before): measure(scorer, role) for each model `known` keeps nothing of at this stage's scope
    (validation.memo), through `engines` (for transformers, each model loaded in turn and freed
    before the next). Figures come back as plain JSON data whether measured now or found.

    With `failed` (the power check), the candidate is measured only up to its first unit whose gate
    failed outright: the stage's verdict is then settled, since a unit's gates depend on that unit
    alone. Its figures, partial, are kept nowhere."""
    known = Known() if known is None else known
    scope = stage_scope(settings, candidate, engines.address_part())

    def scorer(path: str | Path, role: str) -> Scorer:
        return engines.scorer(path, role, lambda: load_model(path, compute))

    def measured_now(path: str | Path, role: str) -> Callable[[], dict[str, Any]]:
        # A transformers model lives only in this call: freed before the next one is loaded.
        return lambda: dict(measure(scorer(path, role), role))

    base_figures, was_kept = known.measured(baseline, stage, scope, measured_now(baseline, "baseline"))
    figures, reused = {"baseline": base_figures}, ["baseline"] if was_kept else []
    if failed is None:
        figures["candidate"], was_kept = known.measured(candidate, stage, scope, measured_now(candidate, "candidate"))
        return figures, reused + (["candidate"] if was_kept else [])
    figures["candidate"] = {}
    with closing(measure(scorer(candidate, "candidate"), "candidate")) as units:
        for unit, measured in units:
            figures["candidate"][unit] = plain(measured)
            if failed(unit, figures["baseline"][unit], figures["candidate"][unit]):
                break
    return figures, reused


def stopped_early(measured: list[str], units: Iterable) -> list[str]:
    """The warning of a stage that measured the candidate only up to its first failed unit."""
    units = [str(u) for u in units]
    if len(measured) == len(units):
        return []
    return [
        f"measured up to its first failed gate ({measured[-1]}: {len(measured)} of {len(units)}); "
        f"{', '.join(units[len(measured) :])} not measured, as the verdict did not depend on them"
    ]
