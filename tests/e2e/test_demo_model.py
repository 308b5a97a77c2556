"""The real demo model (SmolLM2-135M-Instruct): AWQ against round-to-nearest. (Served by vLLM as its
release card says, with our loader's answer beside it: tests/e2e/test_platform.py.)"""

from transformers import AutoTokenizer

from awq_release.texts import token_stream
from validation.models import load_model
from validation.perplexity import perplexity


def test_awq_closes_most_of_the_rtn_perplexity_gap(demo_quantized, demo):
    tokenizer = AutoTokenizer.from_pretrained(demo.model_dir)
    ids = token_stream(tokenizer, demo.domain_eval_texts[-3:])[:2560]
    original, awq, rtn = (
        perplexity(load_model(path), ids) for path in (demo.model_dir, demo_quantized / "awq", demo_quantized / "rtn")
    )
    assert original < awq < rtn
    assert awq - original < 0.7 * (rtn - original), f"original {original:.2f}, awq {awq:.2f}, rtn {rtn:.2f}"
