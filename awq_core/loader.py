"""load_quantized(): a 4-bit checkpoint (AWQ GEMM or compressed-tensors) back as a torch model for evaluation.

Either format becomes AWQLinear layers: the integers are the same, only their packing differs.
"""

from pathlib import Path

from torch import Tensor, nn

from awq_core.architectures import architecture_for
from awq_core.checkpoint import CheckpointFolder
from awq_core.compute import Resolved, resolve
from awq_core.formats import format_of
from awq_core.model import meta_model, restore_computed_buffers
from awq_core.packing import LAYOUTS, pack_awq
from awq_release.errors import CheckpointError
from kernels import AWQLinear


def _as_awq(state: dict[str, Tensor], linear: str, fmt: str) -> dict[str, Tensor]:
    """One linear's stored tensors (popped from `state`) as the AWQ GEMM tensors AWQLinear holds."""
    layout = LAYOUTS[fmt]
    if absent := [suffix for suffix in layout.suffixes if f"{linear}.{suffix}" not in state]:
        raise CheckpointError(f"{linear} has no {', '.join(absent)}: the checkpoint does not match its {fmt} config.")
    stored = {suffix: state.pop(f"{linear}.{suffix}") for suffix in layout.suffixes}
    groups = layout.unpack(stored)
    return {f"{linear}.{k}": v for k, v in pack_awq(groups.q, groups.scales, groups.zeros).items()}


def load_quantized(model_dir: str | Path, compute: Resolved | None = None) -> nn.Module:
    """The model on compute's device, floating tensors in its dtype (auto when None); packed
    weights and fp16 scales stay as stored."""
    compute = compute or resolve()
    ckpt = CheckpointFolder(model_dir)
    fmt, group_size = format_of(ckpt.config, str(ckpt.dir))
    arch = architecture_for(ckpt.config)
    model, hf_config = meta_model(ckpt.dir, compute.dtype)
    for block in model.get_submodule(arch.layers):
        for name in arch.linears:
            linear = block.get_submodule(name)
            parent, _, child = name.rpartition(".")
            awq = AWQLinear(
                linear.in_features,
                linear.out_features,
                group_size,
                linear.bias is not None,
                compute.dtype,
                device="meta",
            )
            block.get_submodule(parent).set_submodule(child, awq)

    state = {name: ckpt.get(name) for name in ckpt.tensors}
    if fmt != "awq":
        for i in range(len(model.get_submodule(arch.layers))):
            for name in arch.linears:
                state |= _as_awq(state, f"{arch.layers}.{i}.{name}", fmt)
    floating = [n for n, t in state.items() if t.is_floating_point() and not n.endswith(".scales")]
    state |= {n: state[n].to(compute.dtype) for n in floating}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {f"{arch.lm_head}.weight"} if hf_config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(
            f"{ckpt.dir} does not match its config: missing {sorted(set(missing) - tied)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}."
        )
    if tied:
        model.get_submodule(arch.lm_head).weight = model.get_submodule(arch.embed).weight
    restore_computed_buffers(model, arch, hf_config)
    return model.to(compute.device).eval()
