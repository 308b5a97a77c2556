"""Load the baseline (dense) and the candidate (AWQ, through awq_core's loader) the same way, on
the compute device and in the compute dtype (awq_core.compute decides both)."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from torch import nn
from transformers import AutoModelForCausalLM

from awq_core.checkpoint import CheckpointFolder
from awq_core.compute import Resolved, resolve
from awq_core.loader import load_quantized

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
    measure: Callable[[nn.Module, str], Figures],
    compute: Resolved,
    known: dict[str, Figures] | None = None,
) -> dict[str, Figures]:
    """{"baseline": ..., "candidate": ...}: measure(model, role) for each, loaded one at a time. A
    folder's figures already in `known` (keyed by its path) are reused, and new ones are added to it:
    the power check measures the baseline once for all its damaged candidates."""
    known = {} if known is None else known
    figures = {}
    for role, path in (("baseline", baseline), ("candidate", candidate)):
        if str(path) not in known:
            model = load_model(path, compute)
            known[str(path)] = measure(model, role)
            del model  # before the next one is loaded
        figures[role] = known[str(path)]
    return figures
