"""A model skeleton on the meta device, and decoder blocks materialized one at a time."""

import copy
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from awq_core.architectures import Architecture


def meta_model(model_dir: str | Path, dtype: torch.dtype) -> tuple[nn.Module, PretrainedConfig]:
    """The model's modules with no storage: shapes and forward code, weights assigned later."""
    config = AutoConfig.from_pretrained(model_dir)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), config


def rotary_embedding(model: nn.Module, arch: Architecture, config: PretrainedConfig) -> nn.Module:
    """Rebuilt on CPU: its inv_freq buffer is computed at construction, which the meta skeleton skipped."""
    meta_rotary = model.get_submodule(arch.rotary)
    return type(meta_rotary)(config=config)


def block_kwargs(rotary: nn.Module, seqlen: int, dtype: torch.dtype) -> dict:
    """Forward arguments shared by every window of one length: causal attention, positions 0..L-1."""
    position_ids = torch.arange(seqlen)[None]  # (1, L)
    probe = torch.empty(1, seqlen, 1, dtype=dtype)
    return {"attention_mask": None, "position_ids": position_ids, "position_embeddings": rotary(probe, position_ids)}


def materialize_block(model: nn.Module, arch: Architecture, index: int, state: dict[str, Tensor]) -> nn.Module:
    """A real copy of decoder block `index`, its tensors taken from `state` without copying them."""
    block = copy.deepcopy(model.get_submodule(arch.layers)[index])
    block.load_state_dict(state, assign=True, strict=True)
    return block


@torch.no_grad()
def run_block(block: nn.Module, hidden: Tensor, kwargs: dict, chunk_tokens: int = 4096) -> Tensor:
    """hidden (N, L, C) -> block output (N, L, C), a few windows at a time to bound activation memory."""
    N, L, _ = hidden.shape
    per_chunk = max(1, chunk_tokens // L)
    return torch.cat([block(hidden[i : i + per_chunk], **kwargs) for i in range(0, N, per_chunk)])
