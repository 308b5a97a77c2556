"""The checkpoints teams really have (issue 38): tiny random models of each architecture family,
saved in the storage dtypes, shard layouts, embedding ties and tokenizer set-ups users bring, each
taken through calibration, quantization and the three quality stages in process. Every one ends in
a verdict, never a traceback."""

import json
from pathlib import Path

import pytest
import torch

from awq_core import QuantConfig, build_calibration, quantize
from awq_core.checkpoint import CheckpointFolder, load_tokenizer
from tests.conftest import make_tiny_model
from validation import long_context, perplexity, tasks
from validation.settings import LongContextSettings, PerplexitySettings, TaskSettings, TaskSpec

# (architecture, storage dtype, largest shard, tied embeddings, pad token, chat template): each value
# of each axis appears with more than one architecture, and every architecture meets each axis.
VARIANTS = [
    ("LlamaForCausalLM", torch.bfloat16, None, True, "none", True),
    ("LlamaForCausalLM", torch.float32, "500KB", False, "eos", False),
    ("Qwen3ForCausalLM", torch.float16, "300KB", True, "none", False),
    ("Qwen3ForCausalLM", torch.bfloat16, None, False, "own", True),
    ("Gemma3ForCausalLM", torch.float32, None, True, "own", False),
    ("Gemma3ForCausalLM", torch.float16, "300KB", False, "none", True),
]


def with_tokenizer_setup(folder: Path, pad: str, chat_template: bool) -> None:
    """Edit the copied tokenizer as other checkpoints ship it: no pad token, pad = EOS, or its own;
    with or without a chat template."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if pad == "none":
        config.pop("pad_token", None)
    elif pad == "eos":
        config["pad_token"] = config["eos_token"]
    if not chat_template:
        config.pop("chat_template", None)
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_path.write_text(json.dumps(config))


def chat_calibration(path: Path, calib_file: Path) -> Path:
    """Chat-formatted calibration records: rendered by the template, or read as plain text without one."""
    paragraphs = [p for p in calib_file.read_text().split("\n\n") if len(p) > 200][:60]
    turns = [[{"role": "user", "content": "Summarise."}, {"role": "assistant", "content": p}] for p in paragraphs]
    path.write_text("".join(json.dumps({"messages": t}) + "\n" for t in turns))
    return path


@pytest.mark.parametrize("architecture, dtype, shard, tied, pad, chat_template", VARIANTS)
def test_every_variant_ends_in_a_verdict(
    tmp_path, tokenizer_dir, calib_file, task_files, architecture, dtype, shard, tied, pad, chat_template
):
    model = make_tiny_model(
        tmp_path / "model", tokenizer_dir, architecture, dtype=dtype, max_shard_size=shard, tie_word_embeddings=tied
    )
    with_tokenizer_setup(model, pad, chat_template)
    tokenizer = load_tokenizer(model)
    assert (tokenizer.pad_token is None) == (pad == "none") and (tokenizer.chat_template is None) != chat_template
    shards = {info.file.name for info in CheckpointFolder(model).tensors.values()}
    assert (len(shards) > 1) == (shard is not None)

    texts = [calib_file, chat_calibration(tmp_path / "chats.jsonl", calib_file)]
    calib = build_calibration(tokenizer, texts, n_samples=8, seqlen=128)
    config = QuantConfig(group_size=32, n_grid=10, search_tokens=512)
    candidate = Path(quantize(model, tmp_path / "awq", calib, config, progress=False).out_dir)

    quiz = TaskSpec(task_files["world_capitals"])
    chat = TaskSpec(task_files["capitals_chat"])
    results = [
        perplexity.run(model, candidate, PerplexitySettings(domain_texts=(calib_file,), max_tokens=512, seqlen=128)),
        tasks.run(model, candidate, TaskSettings(tasks=(quiz, chat), limit=6, max_new_tokens=4, max_drop=1.0)),
        long_context.run(
            model, candidate, LongContextSettings(texts=(calib_file,), lengths=(256,), documents=1, target_tokens=32)
        ),
    ]
    for result in results:
        assert result.status in ("passed", "failed") and result.error is None, result.reasons
        assert result.metrics and all(m.verdict in ("pass", "fail", "inconclusive") for m in result.metrics)
    warned = any("no chat template" in w for w in results[1].warnings)
    assert warned != chat_template
