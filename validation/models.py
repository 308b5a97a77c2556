"""Load the baseline (dense) and the candidate (AWQ, through awq_core's loader) the same way, on
the compute device and in the compute dtype (awq_core.compute decides both)."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn
from transformers import AutoModelForCausalLM

from awq_core.checkpoint import CheckpointFolder
from awq_core.compute import Resolved, resolve
from awq_core.loader import load_quantized
from validation.memo import Known, stage_scope

Figures = TypeVar("Figures")


def load_model(model_dir: str | Path, compute: Resolved | None = None) -> nn.Module:
    """An AWQ checkpoint through awq_core's loader (kernels.AWQLinear), anything else through transformers."""
    compute = compute or resolve()
    CheckpointFolder(model_dir)  # clear errors for a broken folder
    quantized = "quantization_config" in json.loads((Path(model_dir) / "config.json").read_text())
    if quantized:
        return load_quantized(model_dir, compute)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute.dtype, trust_remote_code=False)
    return dense.to(compute.device).eval()


def context_length(model_dir: str | Path) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings", 2048))


def measure_both(
    baseline: str | Path,
    candidate: str | Path,
    stage: str,
    settings: Any,
    measure: Callable[[nn.Module, str], Figures],
    compute: Resolved,
    known: Known | None = None,
) -> tuple[dict[str, Figures], list[str]]:
    """({"baseline": ..., "candidate": ...}, the roles whose figures were measured before):
    measure(model, role) for each model `known` keeps nothing of at this stage's scope (validation.memo),
    loaded one at a time. Figures come back as plain JSON data whether measured now or found."""
    known = Known() if known is None else known
    scope = stage_scope(settings, candidate, compute)
    figures, reused = {}, []

    def measured_now(path: str | Path, role: str) -> Callable[[], Figures]:
        # The model lives only in this call: freed before the next one is loaded.
        return lambda: measure(load_model(path, compute), role)

    for role, path in (("baseline", baseline), ("candidate", candidate)):
        figures[role], was_kept = known.measured(path, stage, scope, measured_now(path, role))
        reused += [role] if was_kept else []
    return figures, reused
