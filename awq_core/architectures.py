"""Architecture knowledge as data: which linears share a scale, what precedes them, what to measure.

Keyed by the HF architecture name in config.json. An architecture missing here is refused, never
quantized with guessed defaults.
"""

from dataclasses import dataclass

from awq_release.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class ScaleGroup:
    """Linears that read the same input and so share one per-input-channel scale.

    prev:    the module whose output is that input; 1/s is folded into it (a norm's weight or a
             linear's output rows). Names are relative to a decoder block.
    linears: the linears whose input columns are multiplied by s.
    inspect: the module whose output measures a candidate scale's loss.
    """

    prev: str
    linears: tuple[str, ...]
    inspect: str


@dataclass(frozen=True)
class Architecture:
    groups: tuple[ScaleGroup, ...]
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    rotary: str = "model.rotary_emb"
    lm_head: str = "lm_head"
    no_clip: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")  # q·k is too sensitive to clip
    # Where validation's power check plants damage (validation.power), relative to a block.
    rotary_projections: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")  # rotate_half layout
    attention_out: str = "self_attn.o_proj"
    mlp_out: str = "mlp.down_proj"
    # Gemma: norms compute (norm_offset + w) * x, so folding 1/s into one is not a plain division;
    # embeddings are multiplied by sqrt(hidden size) in the model's dtype; the rotary embedding is
    # computed per attention type (sliding or full), each with its own base.
    norm_offset: float = 0.0
    scaled_embedding: bool = False
    rotary_per_layer_type: bool = False

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(name for group in self.groups for name in group.linears)


LLAMA = Architecture(
    groups=(
        ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
        # Skipped when GQA makes v_proj's outputs fewer than o_proj's inputs.
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    )
)

# Gemma 3 normalises attention's and the MLP's outputs too (post_attention_layernorm,
# post_feedforward_layernorm); those follow the linears, so nothing is folded into them. Its q and k
# are normalised per head (q_norm, k_norm) before q·k, so their ranges are searched like the other
# linears': on Gemma 3 270M that narrowed the Shakespeare gap and left SOTU's as it was
# (bench/quantize.py; figures in docs/quantization.md).
GEMMA3 = Architecture(
    groups=(
        ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
        ScaleGroup("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
    no_clip=(),
    norm_offset=1.0,
    scaled_embedding=True,
    rotary_per_layer_type=True,
)

ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": LLAMA,  # q/k/v biases are untouched by input-channel scaling
    # Qwen3 normalises each head after q_proj/k_proj (q_norm, k_norm). Those norms sit inside the
    # inspected attention, so the qkv loss accounts for them; they are never folded into or quantized.
    "Qwen3ForCausalLM": LLAMA,
    "Gemma3ForCausalLM": GEMMA3,  # text-only Gemma 3 (270M, 1B)
}


def head_dim(config: dict) -> int:
    """Channels per attention head, from config.json (explicit, or hidden size over heads)."""
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def architecture_for(config: dict) -> Architecture:
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise UnsupportedArchitecture(
        f"config.json names architecture {names or 'none'}, which has no AWQ mapping. "
        f"Supported: {', '.join(sorted(ARCHITECTURES))}. Add a mapping to awq_core/architectures.py to support it."
    )
