"""Validation building blocks on tiny models: settings, task files, scoring, statistics, gates."""

import json
import typing

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from awq_release.errors import ValidationError
from deploy.engine import engine_args
from validation import long_context, perplexity, tasks
from validation.result import StageResult, gate
from validation.settings import (
    LongContextSettings,
    PerplexitySettings,
    StageName,
    TaskSettings,
    TaskSpec,
    load_settings,
)
from validation.stages import STAGES


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_every_stage_name_has_a_stage_in_release_order():
    assert tuple(STAGES) == typing.get_args(StageName) == ("perplexity", "tasks", "long_context", "load")


def test_settings_file_types_globs_and_unknown_keys(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("x")
    config = tmp_path / "policy.yaml"
    config.write_text(
        f"validation:\n  perplexity:\n    domain_texts: ['{tmp_path}/*.txt']\n    max_increase: 1\n  load:\n    "
        f"sla: {{ttft_p90_s: 0.5}}\n"
    )
    settings = load_settings(config)
    assert settings.perplexity.domain_texts == (tmp_path / "a.txt", tmp_path / "b.txt")
    assert settings.perplexity.max_increase == 1.0 and settings.load.sla.ttft_p90_s == 0.5
    config.write_text("perplexity: {max_increse: 0.1}\n")
    with pytest.raises(ValidationError, match=r"unknown keys \['max_increse'\]"):
        load_settings(config)
    config.write_text("tasks: {max_drop: lots}\n")
    with pytest.raises(ValidationError, match="tasks.max_drop: expected float"):
        load_settings(config)
    config.write_text(f"perplexity: {{domain_texts: ['{tmp_path}/*.md']}}\n")
    with pytest.raises(ValidationError, match="matches no file"):
        load_settings(config)


def test_a_release_policys_serving_is_what_the_load_stage_starts(tmp_path, tiny_llama):
    config = tmp_path / "policy.yaml"
    config.write_text("validation: {load: {port: 8123}}\nserving: {max_model_len: 1024, enforce_eager: true}\n")
    settings = load_settings(config).load
    assert (settings.port, settings.serving.max_model_len, settings.serving.enforce_eager) == (8123, 1024, True)
    engine = engine_args(tiny_llama, "candidate", settings.serving, "gpu")
    assert engine["max-model-len"] == 1024 and engine["enforce-eager"] is True and "quantization" not in engine
    config.write_text("validation: {}\nserving: {max_model_len: long}\n")
    with pytest.raises(ValidationError, match="serving.max_model_len: expected int"):
        load_settings(config)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "has no items"),
        (['{"question": "q", "choices": ["a", "b"], "answer": 0}', "{broken"], ":2 is not valid JSON"),
        ([{"question": "q", "choices": ["a", "b"], "answer": 2}], "must be the index of the right choice"),
        ([{"question": "q", "choices": ["only"], "answer": 0}], "at least two 'choices'"),
        ([{"prompt": "p", "answer": ""}], "non-empty 'answer'"),
        ([{"prompt": "p", "answer": "a", "match": "fuzzy"}], "'exact' or 'contains'"),
        ([{"text": "neither"}], "needs 'choices' (multiple choice) or 'prompt'"),
    ],
)
def test_malformed_task_files_are_refused(tmp_path, rows, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tasks.load_task(write_jsonl(tmp_path / "t.jsonl", rows))


def test_missing_task_file(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        tasks.run(tmp_path, tmp_path, TaskSettings(tasks=(TaskSpec(tmp_path / "nope.jsonl"),)))


def test_paired_drop_interval():
    base = [1] * 80 + [0] * 20
    cand = [1] * 70 + [0] * 10 + [1] * 5 + [0] * 15  # loses 10 items, gains 5
    stats = tasks.paired_drop(base, cand)
    assert stats["baseline"] == 0.8 and stats["candidate"] == 0.75 and stats["drop"] == pytest.approx(0.05)
    assert stats["relative_drop"] == pytest.approx(0.0625)
    diffs = torch.tensor([0.0] * 70 + [1.0] * 10 + [-1.0] * 5 + [0.0] * 15)
    half = 1.959964 * diffs.std().item() / 10
    assert stats["ci_low"] == pytest.approx(0.05 - half) and stats["ci_high"] == pytest.approx(0.05 + half)
    assert stats["relative_ci_high"] == pytest.approx((0.05 + half) / 0.8)  # what the gate reads


def test_multiple_choice_scores_match_a_direct_computation(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    items = [
        tasks.MultipleChoice("What is the capital of France?", ("Paris", "Lyon", "Nice"), 0),
        tasks.MultipleChoice("2 + 2 =", ("four", "five"), 1),
    ]
    lls = tasks.loglikelihoods(model, tokenizer, [(i.context, " " + c) for i in items for c in i.choices], batch_size=2)
    for (item, choice), ll in zip([(i, c) for i in items for c in i.choices], lls, strict=True):
        ctx = tokenizer(item.context, add_special_tokens=False)["input_ids"]
        whole = tokenizer(item.context + " " + choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        expected = sum(logprobs[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))
        assert ll == pytest.approx(expected, abs=1e-3)
    expected_acc, offset = [], 0
    for item in items:
        ll = lls[offset : offset + len(item.choices)]
        offset += len(item.choices)
        expected_acc.append(int(ll.index(max(ll)) == item.answer))
    assert tasks.score_multiple_choice(model, tokenizer, items, batch_size=3)["acc"] == expected_acc
    advanced = []  # the tasks bar: whole items, as soon as all their choices are scored
    tasks.score_multiple_choice(model, tokenizer, items, batch_size=2, advance=advanced.append)
    assert advanced == [0, 1, 1]  # 5 choices in batches of 2: after 2 nothing whole, after 4 the first, then the second


def test_stage_result_serialises_with_reasons():
    result = StageResult(
        "tasks",
        [gate("acc relative drop", 0.8, 0.7, 0.125, 0.03), gate("tok/s", None, 5.0, 5.0, 1.0, higher_is_better=True)],
        ["few items"],
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is False and data["stage"] == "tasks" and data["warnings"] == ["few items"]
    assert data["reasons"] == ["acc relative drop: 0.125 > threshold 0.03 (baseline 0.8, candidate 0.7)"]
    assert [m["passed"] for m in data["metrics"]] == [False, True]


def test_perplexity_gate_on_tiny_models(tmp_path, tiny_llama, calib_file):
    settings = PerplexitySettings(domain_texts=(calib_file,), max_tokens=1024, seqlen=128, stride=64)
    same = perplexity.run(tiny_llama, tiny_llama, settings)
    assert same.passed and same.metrics[0].value == pytest.approx(0.0)
    with pytest.raises(ValidationError, match="no text"):
        perplexity.run(tiny_llama, tiny_llama, PerplexitySettings())


def test_long_context_lengths_must_fit_the_model(tiny_llama, calib_file):
    assert long_context.lengths_for(LongContextSettings(), 8192) == ([512, 2048, 4096, 8192], [])
    assert long_context.lengths_for(LongContextSettings(), 4096)[0] == [512, 2048, 4096]
    with pytest.raises(ValidationError, match=r"Context lengths \[2048\] exceed the model's 1024 positions"):
        long_context.run(tiny_llama, tiny_llama, LongContextSettings(texts=(calib_file,), lengths=(512, 2048)))
