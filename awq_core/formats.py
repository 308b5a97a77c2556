"""The checkpoint formats a quantized model is written in: config.json's quantization_config for each,
and which one a folder holds. The tensors of each are awq_core.packing's LAYOUTS.

- "awq": AutoAWQ GEMM, what vLLM serves as quantization="awq" and transformers loads through gptqmodel.
- "compressed-tensors": llm-compressor's W4A16 asymmetric group-wise pack-quantized, what vLLM serves as
  quantization="compressed-tensors" and transformers loads with the pure-Python compressed-tensors package.
"""

from typing import Literal

from awq_release.errors import CheckpointError

Format = Literal["awq", "compressed-tensors"]
FORMATS: tuple[Format, ...] = ("awq", "compressed-tensors")


def quantization_config(fmt: Format, group_size: int, not_quantized: list[str]) -> dict:
    """config.json's quantization_config, as AutoAWQ or llm-compressor writes it."""
    if fmt == "awq":
        return {
            "quant_method": "awq",
            "bits": 4,  # the container; QuantConfig.bits < 4 only narrows the values stored in it
            "group_size": group_size,
            "zero_point": True,  # zeros are always stored; symmetric mode stores a constant 8
            "version": "gemm",
            "modules_to_not_convert": not_quantized,
        }
    weights = {
        "num_bits": 4,
        "type": "int",
        "symmetric": False,  # zero points are always stored, as in the AWQ layout
        "group_size": group_size,
        "strategy": "group",
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
    }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
        },
        "ignore": not_quantized,
        "kv_cache_scheme": None,
    }


def format_of(config: dict, where: str) -> tuple[Format, int]:
    """The format and group size of a checkpoint whose config.json is `config`; an error for anything
    but the two 4-bit group-wise layouts awq_core writes."""
    qcfg = config.get("quantization_config") or {}
    if (qcfg.get("quant_method"), qcfg.get("bits"), str(qcfg.get("version", "gemm")).lower()) == ("awq", 4, "gemm"):
        return "awq", qcfg["group_size"]
    if qcfg.get("quant_method") == "compressed-tensors" and qcfg.get("format") == "pack-quantized":
        groups = list(qcfg.get("config_groups", {}).values())
        weights = (groups[0].get("weights") or {}) if len(groups) == 1 else {}
        if (weights.get("num_bits"), weights.get("strategy"), weights.get("actorder")) == (4, "group", None):
            return "compressed-tensors", weights["group_size"]
    raise CheckpointError(
        f"{where} is neither a 4-bit AWQ GEMM checkpoint nor a 4-bit group-wise compressed-tensors pack-quantized "
        f"one (quantization_config: {qcfg or 'none'}): quantize it with `awq-release quantize`."
    )
