"""A model skeleton on the meta device, and decoder blocks materialized one at a time."""

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from awq_core.architectures import Architecture
from awq_core.compute import Resolved
from awq_release.errors import CheckpointError


def meta_model(model_dir: str | Path, dtype: torch.dtype) -> tuple[nn.Module, PretrainedConfig]:
    """The model's modules with no storage: shapes and forward code, weights assigned later."""
    try:  # the folder's code never runs: transformers raises where it would otherwise offer to
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        config._attn_implementation = "sdpa"
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError, OSError, StrictDataclassError) as e:
        raise CheckpointError(
            f"{model_dir}/config.json is not a config transformers can build a model from "
            f"({(str(e).splitlines() or [type(e).__name__])[0][:200]}): re-save it with `save_pretrained`."
        ) from e
    return model.eval(), config


def rotary_embedding(
    model: nn.Module, arch: Architecture, config: PretrainedConfig, device: torch.device = torch.device("cpu")
) -> nn.Module:
    """Rebuilt for real: its inv_freq buffer is computed at construction, which the meta skeleton skipped."""
    meta_rotary = model.get_submodule(arch.rotary)
    return type(meta_rotary)(config=config).to(device)


def embedding_scale(arch: Architecture, config: PretrainedConfig) -> float:
    """What the model multiplies its input embeddings by (Gemma: sqrt of the hidden size)."""
    return config.hidden_size**0.5 if arch.scaled_embedding else 1.0


def restore_computed_buffers(model: nn.Module, arch: Architecture, config: PretrainedConfig) -> None:
    """The buffers a meta skeleton lacks because the model computes them at construction."""
    model.set_submodule(arch.rotary, rotary_embedding(model, arch, config))
    if arch.scaled_embedding:
        model.get_submodule(arch.embed).embed_scale = torch.tensor(embedding_scale(arch, config))


def embed(ids: Tensor, weight: Tensor, arch: Architecture, config: PretrainedConfig, dtype: torch.dtype) -> Tensor:
    """Input embeddings of ids (N, L) -> (N, L, C) in dtype, scaled as the model scales them (in dtype)."""
    hidden = F.embedding(ids, weight).to(dtype)
    scale = embedding_scale(arch, config)
    return hidden * torch.tensor(scale, dtype=dtype) if scale != 1.0 else hidden


def layer_types(config: PretrainedConfig) -> list[str]:
    """Each block's attention type ("full_attention" or "sliding_attention"), all full when unsaid."""
    return list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)


def block_kwargs(
    rotary: nn.Module, arch: Architecture, config: PretrainedConfig, layer_type: str, seqlen: int, compute: Resolved
) -> dict:
    """Forward arguments shared by every window of one length for blocks of one attention type:
    causal attention (within the sliding window where the block has one), positions 0..L-1."""
    position_ids = torch.arange(seqlen, device=compute.device)[None]  # (1, L)
    probe = torch.empty(1, seqlen, 1, dtype=compute.dtype, device=compute.device)
    rotary_args = (layer_type,) if arch.rotary_per_layer_type else ()
    window = getattr(config, "sliding_window", None) if layer_type == "sliding_attention" else None
    mask = None  # None: SDPA's own causal mask
    if window and seqlen > window:
        distance = position_ids[0, :, None] - position_ids[0, None, :]  # (L, L) query minus key position
        mask = ((distance >= 0) & (distance < window))[None, None]  # (1, 1, L, L) True where attended
    return {
        "attention_mask": mask,
        "position_ids": position_ids,
        "position_embeddings": rotary(probe, position_ids, *rotary_args),
    }


def materialize_block(
    model: nn.Module, arch: Architecture, index: int, state: dict[str, Tensor], compute: Resolved
) -> nn.Module:
    """A real copy of decoder block `index` on the compute device, floating tensors in the compute dtype."""
    block = copy.deepcopy(model.get_submodule(arch.layers)[index])
    state = {k: v.to(compute.device, compute.dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    block.load_state_dict(state, assign=True, strict=True)
    return block


def _chunks(block: nn.Module, hidden: Tensor, chunk_tokens: int) -> Iterator[Tensor]:
    """hidden (N, L, C) a few whole windows at a time, on the block's device."""
    N, L, _ = hidden.shape
    device = next(block.parameters()).device
    per_chunk = max(1, chunk_tokens // L)
    return (hidden[i : i + per_chunk].to(device) for i in range(0, N, per_chunk))


@torch.no_grad()
def run_block(block: nn.Module, hidden: Tensor, kwargs: dict, chunk_tokens: int = 4096) -> Tensor:
    """hidden (N, L, C) -> block output (N, L, C), a few windows at a time to bound activation memory.

    hidden may live on the host while the block runs on a GPU: each chunk travels there and back.
    """
    return torch.cat([block(chunk, **kwargs).to(hidden.device) for chunk in _chunks(block, hidden, chunk_tokens)])


class _Reached(Exception):
    """Raised by run_until's hook: the rest of the block's forward is not needed."""


@torch.no_grad()
def run_until(
    block: nn.Module,
    hidden: Tensor,
    kwargs: dict,
    module: nn.Module,
    take: Callable[[Tensor], None],
    chunk_tokens: int = 4096,
) -> None:
    """Run block on hidden in run_block's chunks, but only as far as `module`: take() gets each
    chunk's input to it, and what comes after it in the block is skipped."""

    def reached(_, args):
        take(args[0])
        raise _Reached

    handle = module.register_forward_pre_hook(reached)
    try:
        for chunk in _chunks(block, hidden, chunk_tokens):
            try:
                block(chunk, **kwargs)
            except _Reached:
                pass
    finally:
        handle.remove()
