"""Our multiple-choice acc and acc_norm equal lm-evaluation-harness's, item by item, on the demo model."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from validation.tasks import load_task, score_multiple_choice

ITEMS = 40

TASK_YAML = """task: parity_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_multiple_choice_accuracy_equals_lm_eval(tmp_path, demo, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    subset = tmp_path / "capitals.jsonl"
    subset.write_text("".join(line + "\n" for line in demo.tasks["world_capitals"].read_text().splitlines()[:ITEMS]))
    (tmp_path / "parity_capitals.yaml").write_text(TASK_YAML.format(path=subset))

    model = AutoModelForCausalLM.from_pretrained(demo.model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(demo.model_dir)
    ours = score_multiple_choice(model, tokenizer, load_task(subset), batch_size=8)

    results = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8),
        tasks=["parity_capitals"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
    )
    samples = sorted(results["samples"]["parity_capitals"], key=lambda s: s["doc_id"])
    assert len(samples) == ITEMS
    assert ours["acc"] == [int(s["acc"]) for s in samples], json.dumps(results["results"])
    assert ours["acc_norm"] == [int(s["acc_norm"]) for s in samples]
    assert sum(ours["acc"]) / ITEMS > 0.4  # four choices: chance is 0.25
