"""Quantization settings: one frozen dataclass, checked when built."""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from awq_core.formats import FORMATS, Format
from awq_release.errors import QuantizationError

Propagation = Literal["quantized", "original"]
Method = Literal["awq", "rtn"]
Clip = Literal["asymmetric", "symmetric", "none"]

# GPTQ's compensation follows the calibration inputs' hessian, which a small calibration set fits:
# from 64 x 512 tokens it narrowed the held-out gap on both texts and lost fewer quiz answers, while
# from 16 x 512 it lost answers that rounding to nearest kept, failing a critical gate
# (bench/quantize.py; figures in docs/quantization.md).
GPTQ_MIN_TOKENS = 32768


def setting(default, help: str, research: bool = False):
    """A field with what the command line says of it (awq-release quantize makes one flag per field);
    `research`: an ablation switch, listed apart from what a user sets."""
    return field(default=default, metadata={"help": help, "research": research})


@dataclass(frozen=True)
class QuantConfig:
    method: Method = setting("awq", "rtn: plain round-to-nearest, no search nor refinement (the baseline to beat)")
    # Values of 2 or 3 bits still pack into the 4-bit layout: a deliberately damaged model.
    bits: int = setting(4, "bits per weight (2 or 3 only to test the gates)", research=True)
    group_size: int = setting(64, "input channels per scale and zero point (32, 64 or 128)")
    zero_point: bool = setting(True, "asymmetric INT4; --no-zero-point stores a constant zero of 8 (symmetric)")
    # alpha = step / n_grid in the scale search: n_grid / 2 + 2 steps tried, plus the identity.
    n_grid: int = setting(20, "steps of the scale search's exponent", research=True)
    # After the scales, each group's range is searched for its output error on the calibration tokens:
    # one bound on |w| (AutoAWQ's "symmetric"), its two ends apart ("asymmetric", for the asymmetric
    # quantizer), or not at all. The search reaches max_shrink of |w|'s bound in n_clip_grid steps.
    # "auto": asymmetric where GPTQ rounds and the quantizer has zero points, else symmetric. Before
    # GPTQ, asymmetric narrowed the general-text gap on both models (bench/quantize.py; figures in
    # docs/quantization.md); rounding to nearest keeps the search the main job's gates were measured with.
    clip: Clip | Literal["auto"] = setting("auto", "the range search per group (auto: asymmetric where GPTQ rounds)")
    max_shrink: float = setting(0.5, "how far the range search may shrink a group's range", research=True)
    n_clip_grid: int = setting(20, "steps of the range search", research=True)
    # Then each group's scale and zero point refitted for output error (awq_core.rounding). Off by
    # default: it lowers the calibration error but raised held-out perplexity (bench/quantize.py).
    refine: bool = setting(False, "refit each group's scale and zero point for output error", research=True)
    # Then the integers chosen with GPTQ's error compensation, groups' parameters fixed: true, false,
    # or "auto", on from GPTQ_MIN_TOKENS calibration tokens (decided_for).
    gptq: bool | Literal["auto"] = setting("auto", "GPTQ error compensation in rounding (auto: from GPTQ_MIN_TOKENS)")
    # Added to the hessian's diagonal, as a share of its mean. GPTQ's usual 0.01 fits the calibration
    # domain and lost on general text; 0.3 kept the domain gain and won on both texts against 0.2 and
    # 0.5 (bench/quantize.py; figures in docs/quantization.md).
    gptq_damp: float = setting(0.3, "GPTQ's damping, as a share of the hessian's mean diagonal", research=True)
    # Columns with the largest inputs first; their groups stay in place.
    gptq_act_order: bool = setting(True, "GPTQ rounds the columns with the largest inputs first", research=True)
    # The range search's and GPTQ's input moments for o_proj, the MLP and down_proj: from the original
    # block, or measured again before each group with the groups before it already quantized, so
    # each compensates what the earlier ones lost (GPTQ's true-sequential). Costs a block forward
    # per group. Alone it did not win on both texts and the quiz (bench/quantize.py); fit_original
    # turns it on.
    sequential: bool = setting(False, "measure each group's inputs with the groups before it quantized", research=True)
    # Each linear's target: what it outputs reading the quantized model's input (GPTQ), or what the
    # original model's linear output at the same token, so it also makes up for what the blocks and
    # groups before it lost (GPTAQ's asymmetric calibration; awq_core.rounding.toward_original).
    # Needs the groups before measured quantized, so it measures sequentially. "auto": where GPTQ
    # rounds. It narrowed the held-out gap on both texts and both models (bench/quantize.py; figures
    # in docs/quantization.md).
    fit_original: bool | Literal["auto"] = setting(
        "auto", "fit each linear to the original model's outputs (auto: where GPTQ rounds)"
    )
    search_tokens: int = setting(4096, "calibration tokens the searches measure output error on", research=True)
    # What the next block sees: outputs of the quantized block (errors compound as at inference,
    # llm-compressor) or of the original one (AutoAWQ). bench/quantize.py measures both.
    propagate: Propagation = setting("quantized", "what feeds the next block", research=True)
    format: Format = setting("awq", "checkpoint layout: AutoAWQ GEMM or llm-compressor's (the same integers)")

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
        if self.clip not in ("asymmetric", "symmetric", "none", "auto"):
            raise QuantizationError(f"clip={self.clip!r}: choose 'asymmetric', 'symmetric', 'none' or 'auto'.")
        if self.refine and not self.zero_point:
            raise QuantizationError(
                "refine fits each group's integer zero point, which the symmetric quantizer does not have: "
                "set refine: false with zero_point: false (--no-zero-point)."
            )
        for name in ("gptq", "fit_original"):
            if getattr(self, name) not in (True, False, "auto"):
                raise QuantizationError(f"{name}={getattr(self, name)!r}: choose true, false or 'auto'.")
        if not 0.0 <= self.gptq_damp < 1.0:
            raise QuantizationError(f"gptq_damp={self.gptq_damp}: must lie in [0, 1).")
        if self.n_grid < 1 or self.n_clip_grid < 1:
            raise QuantizationError("n_grid and n_clip_grid must be at least 1.")
        if self.propagate not in ("quantized", "original"):
            raise QuantizationError(f"propagate={self.propagate!r}: choose 'quantized' or 'original'.")
        if self.format not in FORMATS:
            raise QuantizationError(f"format={self.format!r}: choose one of {', '.join(FORMATS)}.")

    def decided_for(self, tokens: int) -> tuple["QuantConfig", str]:
        """These settings with "auto" decided for a calibration set of `tokens` tokens, and why GPTQ
        is on or off; clip and fit_original follow GPTQ, and fit_original turns sequential on."""
        if self.gptq != "auto":
            gptq, why = self.gptq, "set explicitly"
        elif self.method == "rtn":
            gptq, why = False, "auto: RTN rounds to nearest"
        else:
            gptq = tokens >= GPTQ_MIN_TOKENS
            why = f"auto: {tokens} calibration tokens, {'at least' if gptq else 'fewer than'} {GPTQ_MIN_TOKENS}"
        clip = self.clip
        if clip == "auto":
            clip = "asymmetric" if gptq and self.zero_point else "symmetric"
        fit_original = (gptq if self.fit_original == "auto" else self.fit_original) and self.method == "awq"
        sequential = self.sequential or fit_original
        decided = dataclasses.replace(self, gptq=gptq, clip=clip, fit_original=fit_original, sequential=sequential)
        return decided, why

    def fingerprint(self) -> str:
        """Stable hash of every setting: a resumed run only reuses blocks made with the same one."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
