"""Quantization settings: one frozen dataclass, checked when built."""

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from awq_core.formats import FORMATS, Format
from awq_release.errors import QuantizationError

Propagation = Literal["quantized", "original"]
Method = Literal["awq", "rtn"]


@dataclass(frozen=True)
class QuantConfig:
    method: Method = "awq"  # "rtn": plain round-to-nearest, no search (the baseline AWQ must beat)
    bits: int = 4  # values of 2 or 3 bits still pack into the 4-bit layout (a deliberately damaged model)
    group_size: int = 64
    zero_point: bool = True  # asymmetric INT4; False stores a constant zero of 8 (symmetric)
    n_grid: int = 20  # alpha = step / n_grid in the scale search: n_grid / 2 + 2 steps tried, plus the identity
    max_shrink: float = 0.5  # clipping search shrinks each group's max down to (1 - max_shrink)
    n_clip_grid: int = 20
    clip_tokens: int = 512  # tokens sampled for the clipping search
    search_tokens: int = 4096  # tokens the scale-search loss is measured on (whole windows)
    # What the next block sees: outputs of the quantized block (errors compound as at inference,
    # llm-compressor) or of the original one (AutoAWQ). bench/quantize.py measures both.
    propagate: Propagation = "quantized"
    format: Format = "awq"  # the checkpoint layout written (awq_core.formats): the same integers either way

    def __post_init__(self) -> None:
        if self.method not in ("awq", "rtn"):
            raise QuantizationError(f"method={self.method!r}: choose 'awq' or 'rtn'.")
        if self.bits not in (2, 3, 4):
            raise QuantizationError(
                f"bits={self.bits}: the AWQ GEMM layout holds at most 4 "
                "bits per weight; choose 4 (2 or 3 only for testing)."
            )
        if self.group_size not in (32, 64, 128):
            raise QuantizationError(f"group_size={self.group_size}: choose 32, 64 or 128.")
        if not 0.0 < self.max_shrink < 1.0:
            raise QuantizationError(f"max_shrink={self.max_shrink}: must lie in (0, 1).")
        if self.n_grid < 1 or self.n_clip_grid < 1:
            raise QuantizationError("n_grid and n_clip_grid must be at least 1.")
        if self.propagate not in ("quantized", "original"):
            raise QuantizationError(f"propagate={self.propagate!r}: choose 'quantized' or 'original'.")
        if self.format not in FORMATS:
            raise QuantizationError(f"format={self.format!r}: choose one of {', '.join(FORMATS)}.")

    def fingerprint(self) -> str:
        """Stable hash of every setting: a resumed run only reuses blocks made with the same one."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
