"""One checkpoint quantized on the CPU and on a GPU, compared: how the CUDA path is shown to compute
what the CPU does (tests/unit/test_compute_and_engine.py and bench.gpu run it)."""

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from awq_core.compute import Compute, resolve
from awq_core.config import QuantConfig
from awq_core.loader import load_quantized
from awq_core.quantizer import quantize


def cuda_matches_cpu(model_dir: Path, calib: Tensor, work: Path, config: QuantConfig) -> dict:
    """Quantize one model on the CPU and on the GPU, both in fp32: the least share of equal packed
    int32 words over the linears (the GPU's summation order may flip an integer at a rounding
    boundary) and the largest logit difference between the two models, both loaded on the CPU."""
    reports = {
        device: quantize(model_dir, work / device, calib, config, False, Compute(device, "float32"))
        for device in ("cpu", "cuda")
    }
    words = {}
    for shard in sorted((work / "cpu").glob("*.safetensors")):
        cpu, cuda = load_file(shard), load_file(work / "cuda" / shard.name)
        words |= {name: (cpu[name] == cuda[name]).float().mean().item() for name in cpu if name.endswith(".qweight")}
    fp32_cpu = resolve(Compute("cpu", "float32"))
    with torch.no_grad():
        logits = [load_quantized(work / d, fp32_cpu)(calib[:1, :64]).logits for d in ("cpu", "cuda")]
    return {
        "min_equal_words": min(words.values()),
        "max_logit_difference": (logits[1] - logits[0]).abs().max().item(),
        "logit_scale": logits[0].abs().max().item(),
        "cuda_compute": reports["cuda"].compute,
        "cuda_peak_gpu_mb": reports["cuda"].peak_gpu_mb,
    }
