"""Load the baseline (dense) and the candidate (AWQ, through awq_core's loader) the same way, on
the compute device and in the compute dtype (awq_core.compute decides both)."""

import json
from pathlib import Path

from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from awq_core.checkpoint import CheckpointFolder
from awq_core.compute import Resolved, resolve
from awq_core.loader import load_quantized


def load_model(model_dir: str | Path, compute: Resolved | None = None) -> nn.Module:
    """An AWQ checkpoint through awq_core's loader (kernels.AWQLinear), anything else through transformers."""
    compute = compute or resolve()
    CheckpointFolder(model_dir)  # clear errors for a broken folder
    quantized = "quantization_config" in json.loads((Path(model_dir) / "config.json").read_text())
    if quantized:
        return load_quantized(model_dir, compute)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute.dtype).to(compute.device).eval()


def load_tokenizer(model_dir: str | Path):
    return AutoTokenizer.from_pretrained(model_dir)


def context_length(model_dir: str | Path) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings", 2048))
