"""Ingest: check a dropped checkpoint, merge a LoRA adapter into its base, hash it, size it for the GPU."""

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from awq_core.architectures import architecture_for, head_dim
from awq_core.checkpoint import CheckpointFolder, check_folder, load_tokenizer, read_json
from awq_core.quantizer import check_checkpoint
from awq_release.errors import CheckpointError
from orchestrator.release.hashing import content_hash
from orchestrator.release.policy import ReleasePolicy

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Ingested:
    model_dir: Path  # the full checkpoint to quantize: the folder itself, or the merged base + adapter
    content_hash: str
    weights_fingerprint: str  # CheckpointFolder.fingerprint() of the weights checked finite here
    architecture: str
    size_bytes: int
    base_model: str | None
    adapter_path: str | None
    footprint: dict


def _merge_adapter(adapter_dir: Path, out_dir: Path, policy: ReleasePolicy) -> tuple[Path, str]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_config = read_json(adapter_dir / ADAPTER_CONFIG)
    base_name = adapter_config.get("base_model_name_or_path") if isinstance(adapter_config, dict) else None
    known = policy.base_models or {}
    # Only a base the policy's owner named: a path the adapter names would read another team's folder.
    base_dir = known.get(base_name) if isinstance(base_name, str) else None
    if base_dir is None:
        raise CheckpointError(
            f"{adapter_dir.name} is a LoRA adapter for base model {base_name!r}, which the policy does not name: "
            f"add it to the policy's base_models, as a name and the folder that holds it (known: "
            f"{sorted(known) or 'none'})."
        )
    check_folder(Path(base_dir))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16, trust_remote_code=False)
    try:
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{adapter_dir.name} does not fit base model {base_name!r} at {base_dir}: it was trained for another "
            f"base ({str(e).splitlines()[0][:200]})."
        ) from e
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer_dir = (
        adapter_dir if any((adapter_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model")) else base_dir
    )
    load_tokenizer(tokenizer_dir).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir, base_name


def tensor_parallel_size(need_bytes: float, usable_per_gpu: float, heads: int, least: int, per_node: int) -> int | None:
    """The smallest tensor parallelism from `least` (the policy's) up to the GPUs of one node that
    splits `need_bytes` into what one GPU can hold; vLLM needs it to divide the attention heads.
    None: nothing fits."""
    tp = least
    while tp <= max(least, per_node):
        if heads % tp == 0 and need_bytes / tp <= usable_per_gpu:
            return tp
        tp *= 2
    return None


def footprint(ckpt: CheckpointFolder, policy: ReleasePolicy) -> dict:
    """Serving memory of the 4-bit release: packed linears, 16-bit everything else, and the KV cache
    of max_num_seqs sequences of max_model_len tokens, against the target GPUs' usable memory, and
    the tensor parallelism that makes it fit (the policy's, raised when one GPU is not enough)."""
    arch = architecture_for(ckpt.config)
    linear = re.compile(rf"{re.escape(arch.layers)}\.\d+\.({'|'.join(map(re.escape, arch.linears))})\.weight")
    group = policy.quantization.group_size
    weights = 0.0
    for name, info in ckpt.tensors.items():
        n = math.prod(info.shape)
        # int4 + fp16 scale and packed zero per group
        weights += n * (0.5 + 2.5 / group) if linear.fullmatch(name) else n * 2
    c = ckpt.config
    kv_heads = c.get("num_key_value_heads", c["num_attention_heads"])
    kv_per_token = 2 * c["num_hidden_layers"] * kv_heads * head_dim(c) * 2
    kv = kv_per_token * policy.serving.max_model_len * policy.serving.max_num_seqs
    serving, gpu = policy.serving, policy.target_gpu
    per_gpu = gpu.memory_gib * 2**30 * serving.gpu_memory_utilization
    tp = tensor_parallel_size(
        weights + kv, per_gpu, c["num_attention_heads"], serving.tensor_parallel_size, gpu.per_node
    )
    gpus = tp or max(serving.tensor_parallel_size, gpu.per_node)
    return {
        "weights_gib": weights / 2**30,
        "kv_cache_gib": kv / 2**30,
        "usable_gib": per_gpu * gpus / 2**30,
        "tensor_parallel_size": gpus,
        "fits": tp is not None,
    }


def _hash_and_check(ckpt: CheckpointFolder, known_hash: str | None) -> str:
    """The checkpoint's content hash and the weights' finite check, in one read of the weights; no
    hashing at all where an earlier attempt hashed it."""
    if known_hash is not None:
        ckpt.check_finite()
        return known_hash
    check = ckpt.finite_check()
    digest = content_hash(ckpt.dir, check)
    if not check.done():  # a weight file outside the hashed names: check it the plain way
        ckpt.check_finite()
    return digest


def ingest(folder: Path, work_dir: Path, policy: ReleasePolicy, known_hash: str | None = None) -> Ingested:
    """Everything a checkpoint must pass before the platform spends time on it. `known_hash`: the
    content hash an earlier attempt computed for this very folder (same stat signature)."""
    adapter_path, base_model = None, None
    check_folder(folder)  # an adapter folder too: its files are read, and its tokenizer may be copied
    if (folder / ADAPTER_CONFIG).is_file():
        adapter_path = str(folder)
        folder, base_model = _merge_adapter(folder, work_dir / "merged", policy)
    ckpt, _ = check_checkpoint(folder, policy.quantization)  # all that reads no weight, before reading them
    fit = footprint(ckpt, policy)
    if not fit["fits"]:
        raise CheckpointError(
            f"{folder.name} needs {fit['weights_gib']:.1f} GiB of 4-bit weights "
            f"+ {fit['kv_cache_gib']:.1f} GiB of KV cache, more than the "
            f"{fit['usable_gib']:.1f} GiB usable on {fit['tensor_parallel_size']} of the target GPU "
            f"({policy.target_gpu.name}), as many as tensor parallelism can use on one node: lower "
            "max_model_len or max_num_seqs, or give target_gpu a larger GPU or more GPUs per node (per_node)."
        )
    # A LoRA adapter is known by the model merged from it and its base: the adapter's folder alone
    # (and its stat signature, which `known_hash` is found by) says nothing of a changed base folder.
    digest = _hash_and_check(ckpt, known_hash if adapter_path is None else None)
    return Ingested(
        model_dir=folder,
        content_hash=digest,
        weights_fingerprint=ckpt.fingerprint(),
        architecture=ckpt.config["architectures"][0],
        size_bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        base_model=base_model or ckpt.config.get("_name_or_path"),
        adapter_path=adapter_path,
        footprint=fit,
    )
