"""Calibration windows from .txt and .jsonl (plain text and chat messages)."""

import json

import torch
from transformers import AutoTokenizer

from awq_core.calibration import build_calibration
from awq_release.texts import read_documents, token_stream


def test_jsonl_text_and_chat_messages(tmp_path, tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    path = tmp_path / "data.jsonl"
    rows = [
        {"text": "The budget was balanced."},
        {"messages": [{"role": "user", "content": "Who signed it?"}, {"role": "assistant", "content": "Congress."}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    plain, chat = read_documents([path], tokenizer)
    assert plain == "The budget was balanced."
    assert "<|im_start|>user\nWho signed it?<|im_end|>" in chat and "Congress." in chat


def test_windows_are_spread_over_the_whole_stream(tmp_path, tiny_llama, calib_file):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    stream = token_stream(tokenizer, [calib_file])
    ids = build_calibration(tokenizer, [calib_file], n_samples=4, seqlen=32)
    assert ids.shape == (4, 32) and ids.dtype == torch.int64
    span = stream.numel() // 4
    for i in range(4):  # window i opens span i
        assert torch.equal(ids[i], stream[i * span : i * span + 32])
