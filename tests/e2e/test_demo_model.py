"""The real demo model (SmolLM2-135M-Instruct): AWQ against round-to-nearest, and served by vLLM."""

import json
import os
import urllib.request

import pytest
from transformers import AutoTokenizer

from awq_core.loader import load_quantized
from awq_release.texts import token_stream
from deploy.engine import Serving, engine_args, engine_env
from deploy.server import serve
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


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


@pytest.mark.vllm
def test_vllm_serves_the_awq_checkpoint(demo_quantized, tmp_path):
    """The compressed-tensors one is served by the load stage's test (test_validation_demo)."""
    model_dir = demo_quantized / "awq"
    serving = Serving(dtype="bfloat16", max_model_len=2048, enforce_eager=True)
    with serve(
        engine_args(model_dir, "awq", serving, "cpu"), engine_env(serving, "cpu"), tmp_path / "vllm.log"
    ) as server:
        completion = post(
            f"{server.base_url}/v1/completions",
            {"model": server.model, "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0},
        )
        chat = post(
            f"{server.base_url}/v1/chat/completions",
            {
                "model": server.model,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 24,
                "temperature": 0,
            },
        )
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)  # stopped, not orphaned
    assert "Application startup complete" in server.log_path.read_text()

    text = completion["choices"][0]["text"]
    assert completion["usage"]["completion_tokens"] == 12 and "Paris" in text, text
    assert "Paris" in chat["choices"][0]["message"]["content"], chat

    # Our own loader reads the same checkpoint to the same greedy continuation's first word.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    ours = load_quantized(model_dir).generate(ids, max_new_tokens=4, do_sample=False)
    # vLLM's text leaves special tokens out; so must ours (in bf16 the answer may end at <|im_end|>).
    assert tokenizer.decode(ours[0, ids.shape[1] :], skip_special_tokens=True).split()[0] == text.split()[0]
