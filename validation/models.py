"""Load the baseline (dense) and the candidate (AWQ, through awq_core's loader) the same way."""

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from awq_core.checkpoint import Checkpoint
from awq_core.loader import load_quantized


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """An AWQ checkpoint through awq_core's loader (kernels.AWQLinear), anything else through transformers."""
    Checkpoint(model_dir)  # clear errors for a broken folder
    quantized = "quantization_config" in json.loads((Path(model_dir) / "config.json").read_text())
    if quantized:
        return load_quantized(model_dir, dtype, device())
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device()).eval()


def load_tokenizer(model_dir: str | Path):
    return AutoTokenizer.from_pretrained(model_dir)


def context_length(model_dir: str | Path) -> int:
    return int(json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings", 2048))
