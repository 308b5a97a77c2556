"""load_quantized(): an AWQ GEMM checkpoint back as a torch model (AWQLinear layers) for evaluation."""

from pathlib import Path

from torch import nn

from awq_core.architectures import architecture_for
from awq_core.checkpoint import CheckpointFolder
from awq_core.compute import Resolved, resolve
from awq_core.model import meta_model, rotary_embedding
from awq_release.errors import CheckpointError
from kernels import AWQLinear


def load_quantized(model_dir: str | Path, compute: Resolved | None = None) -> nn.Module:
    """The model on compute's device, floating tensors in its dtype (auto when None); packed
    weights and fp16 scales stay as stored."""
    compute = compute or resolve()
    ckpt = CheckpointFolder(model_dir)
    qcfg = ckpt.config.get("quantization_config") or {}
    if (qcfg.get("quant_method"), qcfg.get("bits"), str(qcfg.get("version", "gemm")).lower()) != ("awq", 4, "gemm"):
        raise CheckpointError(f"{ckpt.dir} is not a 4-bit AWQ GEMM checkpoint (quantization_config: {qcfg or 'none'}).")
    arch = architecture_for(ckpt.config)
    model, hf_config = meta_model(ckpt.dir, compute.dtype)
    for block in model.get_submodule(arch.layers):
        for name in arch.linears:
            linear = block.get_submodule(name)
            parent, _, child = name.rpartition(".")
            awq = AWQLinear(
                linear.in_features,
                linear.out_features,
                qcfg["group_size"],
                linear.bias is not None,
                compute.dtype,
                device="meta",
            )
            block.get_submodule(parent).set_submodule(child, awq)

    state = {}
    for name in ckpt.tensors:
        t = ckpt.get(name)
        state[name] = t.to(compute.dtype) if t.is_floating_point() and not name.endswith(".scales") else t
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {f"{arch.lm_head}.weight"} if hf_config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(
            f"{ckpt.dir} does not match its config: missing {sorted(set(missing) - tied)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}."
        )
    if tied:
        model.get_submodule(arch.lm_head).weight = model.get_submodule(arch.embed).weight
    model.set_submodule(arch.rotary, rotary_embedding(model, arch, hf_config))
    return model.to(compute.device).eval()
