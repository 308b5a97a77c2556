"""Where a quantized model comes from, as one hash: the checkpoint's content, the calibration tokens,
the settings, the compute and the quantizer's own code. Two runs with the same address make the same
integers (the quantizer is deterministic on one machine kind), so a finished one is found, not redone;
changing any input changes the address, so nothing stale is found."""

import functools
import hashlib
import json
from pathlib import Path

from awq_core.config import QuantConfig

# The packages whose code decides the integers: the quantizer and the packing it shares with the kernels.
CODE_PACKAGES = ("awq_core", "kernels")


@functools.cache
def code_fingerprint(packages: tuple[str, ...] = CODE_PACKAGES) -> str:
    """sha256 over the packages' source files, names and bytes (by default the quantizer's): any
    change to them is new code."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def quantization_address(checkpoint_hash: str, tokens_hash: str, config: QuantConfig, compute: str) -> str:
    """The address of the model `config` makes from a checkpoint (its content hash) and calibration
    tokens (their hash) on `compute` (the resolved device and dtype, e.g. "cpu bfloat16")."""
    inputs = {
        "checkpoint": checkpoint_hash,
        "calibration": tokens_hash,
        "settings": config.fingerprint(),
        "compute": compute,
        "code": code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
