"""A model skeleton on the meta device, and decoder blocks materialized one at a time."""

import copy
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from awq_core.architectures import Architecture
from awq_core.compute import Resolved


def meta_model(model_dir: str | Path, dtype: torch.dtype) -> tuple[nn.Module, PretrainedConfig]:
    """The model's modules with no storage: shapes and forward code, weights assigned later."""
    config = AutoConfig.from_pretrained(model_dir)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), config


def rotary_embedding(
    model: nn.Module, arch: Architecture, config: PretrainedConfig, device: torch.device = torch.device("cpu")
) -> nn.Module:
    """Rebuilt for real: its inv_freq buffer is computed at construction, which the meta skeleton skipped."""
    meta_rotary = model.get_submodule(arch.rotary)
    return type(meta_rotary)(config=config).to(device)


def block_kwargs(rotary: nn.Module, seqlen: int, compute: Resolved) -> dict:
    """Forward arguments shared by every window of one length: causal attention, positions 0..L-1."""
    position_ids = torch.arange(seqlen, device=compute.device)[None]  # (1, L)
    probe = torch.empty(1, seqlen, 1, dtype=compute.dtype, device=compute.device)
    return {"attention_mask": None, "position_ids": position_ids, "position_embeddings": rotary(probe, position_ids)}


def materialize_block(
    model: nn.Module, arch: Architecture, index: int, state: dict[str, Tensor], compute: Resolved
) -> nn.Module:
    """A real copy of decoder block `index` on the compute device, floating tensors in the compute dtype."""
    block = copy.deepcopy(model.get_submodule(arch.layers)[index])
    state = {k: v.to(compute.device, compute.dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    block.load_state_dict(state, assign=True, strict=True)
    return block


@torch.no_grad()
def run_block(block: nn.Module, hidden: Tensor, kwargs: dict, chunk_tokens: int = 4096) -> Tensor:
    """hidden (N, L, C) -> block output (N, L, C), a few windows at a time to bound activation memory.

    hidden may live on the host while the block runs on a GPU: each chunk travels there and back.
    """
    N, L, _ = hidden.shape
    device = next(block.parameters()).device
    per_chunk = max(1, chunk_tokens // L)
    chunks = (block(hidden[i : i + per_chunk].to(device), **kwargs).to(hidden.device) for i in range(0, N, per_chunk))
    return torch.cat(list(chunks))
