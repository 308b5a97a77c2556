"""The power check's planted damage on a tiny AWQ model: each damage changes exactly its tensors, the
copy loads and computes differently, the stages run on every copy with the baseline measured once."""

import dataclasses
import itertools
import json
import random
import typing
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from awq_release.errors import ValidationError
from awq_release.settings import from_dict
from kernels.reference import unpack_int4
from tests.conftest import tiny_policy
from validation import models, tasks
from validation.models import load_model
from validation.power import DAMAGES, Candidate, plant, power_check, slow_rotary_pairs
from validation.settings import DamageName, PowerCheckSettings, ValidationSettings
from validation.stages import STAGES


@pytest.fixture
def candidate(rtn_candidate) -> Path:
    return rtn_candidate


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as f:
            found |= {name: f.get_tensor(name) for name in f.keys()}
    return found


def test_every_damage_name_has_a_plan():
    assert set(DAMAGES) == set(typing.get_args(DamageName))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damage_changes_exactly_its_tensors(tmp_path, candidate, damage):
    c = Candidate.open(candidate)
    description, transforms = DAMAGES[damage].plan(c, PowerCheckSettings())
    plant(c, transforms, tmp_path / "copy")
    before, after = tensors(candidate), tensors(tmp_path / "copy")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == set(transforms) and description
    changed_files = {c.tensor_files[name].name for name in transforms}
    for path in candidate.iterdir():  # everything else is the candidate's own file, linked
        copied = tmp_path / "copy" / path.name
        assert copied.is_file() and (path.name in changed_files or copied.stat().st_ino == path.stat().st_ino)

    if damage == "fewer_levels":
        codes = torch.cat([unpack_int4(after[n]).flatten() for n in transforms]).unique()
        assert set(codes.tolist()) <= {2, 6, 10, 14}
    if damage == "zeroed_mlp":
        assert all(not after[n].any() for n in transforms)
    if damage in ("permuted_mlp_scales", "permuted_layer_scales"):  # the same scales, in other channels
        assert all(torch.equal(after[n].sort(dim=1).values, before[n].sort(dim=1).values) for n in transforms)
    if damage == "long_range_rotary":
        pairs = slow_rotary_pairs(c.head_dim, c.rope_theta)
        head_dim, heads = 32, 4
        assert pairs == [15]  # theta 10000, head_dim 32: only the slowest pair turns < 1/8 rad in 512 tokens
        q = "model.layers.0.self_attn.q_proj.scales"
        flipped = (after[q] != before[q]).any(dim=0).nonzero().flatten().tolist()
        assert flipped == [h * head_dim + head_dim // 2 + i for h in range(heads) for i in pairs]
        assert torch.equal(after[q][:, flipped], -before[q][:, flipped])


def test_a_damaged_copy_loads_and_computes_differently(tmp_path, candidate):
    c = Candidate.open(candidate)
    plant(c, DAMAGES["zeroed_mlp"].plan(c, PowerCheckSettings())[1], tmp_path / "copy")
    ids = torch.arange(1, 65)[None]
    with torch.no_grad():
        honest, damaged = (load_model(p)(ids).logits for p in (candidate, tmp_path / "copy"))
    assert (honest - damaged).abs().max() > 1e-3


def test_bad_layer_names_and_dense_candidates_are_refused(tmp_path, candidate, tiny_llama):
    wrong = PowerCheckSettings(layers=("model.layers.0.attn.out",))
    with pytest.raises(ValidationError, match=r"not quantized linears .* for example: model\.layers\."):
        DAMAGES["permuted_layer_scales"].plan(Candidate.open(candidate), wrong)
    with pytest.raises(ValidationError, match="holds no AWQ GEMM tensors"):
        Candidate.open(tiny_llama)


def test_power_check_runs_each_stage_on_each_copy_with_one_baseline(
    tmp_path, candidate, tiny_llama, calib_file, monkeypatch
):
    task = tmp_path / "quiz.jsonl"
    items = [{"question": f"{i} + 1 =", "choices": [str(i + 1), str(i + 2)], "answer": 0} for i in range(16)]
    task.write_text("".join(json.dumps(item) + "\n" for item in items))
    data = tiny_policy(calib_file, task, "http://127.0.0.1:9")["validation"]
    data["power_check"] = {"damages": ["zeroed_mlp", "permuted_layer_scales"]}
    settings = from_dict(ValidationSettings, data)
    loads = []
    real_load = models.load_model
    monkeypatch.setattr(
        models, "load_model", lambda path, compute=None: loads.append(Path(path)) or real_load(path, compute)
    )

    report = power_check(tiny_llama, candidate, settings, tmp_path / "work")
    assert [o.damage for o in report.outcomes] == ["zeroed_mlp", "permuted_layer_scales"]
    assert all(set(o.verdicts) == {"perplexity", "tasks", "long_context"} for o in report.outcomes)
    assert all(set(o.verdicts.values()) <= {"caught", "inconclusive", "missed"} for o in report.outcomes)
    assert report.to_dict()["planted"] == 2 and report.blind == (report.caught == 0)
    assert loads.count(tiny_llama) == 3  # once per stage, not once per stage and damage
    assert not list((tmp_path / "work").iterdir())  # every copy removed


def gates_that_always_fail(calib_file: Path, task: Path) -> ValidationSettings:
    """Two units per stage, and thresholds no model meets (below what a policy file may say): each
    stage's first unit fails outright."""
    texts = [str(calib_file)]
    task.with_name("again.jsonl").write_text(task.read_text())
    data = tiny_policy(calib_file, task, "http://127.0.0.1:9")["validation"]
    data["perplexity"] |= {"general_texts": texts}
    data["tasks"]["tasks"] += [{"path": str(task.with_name("again.jsonl"))}]
    data["long_context"] |= {"lengths": [192, 256]}
    s = from_dict(ValidationSettings, data)
    return dataclasses.replace(
        s,
        perplexity=dataclasses.replace(s.perplexity, max_increase=-0.99),
        tasks=dataclasses.replace(s.tasks, max_drop=-1.0),
        long_context=dataclasses.replace(s.long_context, max_degradation=-0.99),
    )


@pytest.mark.parametrize(
    "stage, first_unit, rest",
    [("perplexity", "domain", "general"), ("tasks", "quiz", "again"), ("long_context", "192", "256")],
)
def test_a_stage_measures_a_copy_only_up_to_its_first_failed_gate(
    tmp_path, candidate, tiny_llama, calib_file, stage, first_unit, rest
):
    task = tmp_path / "quiz.jsonl"
    task.write_text(
        "".join(json.dumps({"question": f"{i} + 1 =", "choices": ["1", "2"], "answer": 0}) + "\n" for i in range(8))
    )
    settings = gates_that_always_fail(calib_file, task)
    whole = STAGES[stage](tiny_llama, candidate, getattr(settings, stage))
    early = STAGES[stage](tiny_llama, candidate, getattr(settings, stage), until_failed=True)

    assert whole.metrics[0].verdict == "fail" and early.status == "failed"
    assert early.metrics == whole.metrics[:1]  # the same gate from the same figures, to the last bit
    assert len(whole.metrics) > 1
    assert f"measured up to its first failed gate ({first_unit}: 1 of 2); {rest} not measured" in early.warnings[0]


@pytest.mark.parametrize("seed", range(20))
def test_the_kindest_completion_puts_the_lowest_bound_on_the_drop(seed):
    """Against every way the remaining items could score, on small random tasks."""
    rng = random.Random(seed)
    n, scored = rng.randint(2, 9), rng.randint(0, 5)
    baseline = [rng.randint(0, 1) for _ in range(n)]
    partial = [rng.randint(0, 1) for _ in range(min(scored, n))]
    kindest = tasks.kindest_completion(baseline, partial, 0.95)
    every = [partial + list(rest) for rest in itertools.product((0, 1), repeat=n - len(partial))]
    assert kindest[: len(partial)] == partial and kindest in every
    low = min(tasks.paired_drop(baseline, c)["ci_low"] for c in every)
    assert tasks.paired_drop(baseline, kindest)["ci_low"] == pytest.approx(low, abs=1e-12)


def test_a_task_certain_to_fail_is_not_scored_to_its_end(tmp_path, candidate, tiny_llama, calib_file):
    """64 copies of one question: both models answer each alike, so after the first 32 (two batches of
    16) no scores of the rest could keep the drop within a ceiling of -100%."""
    task = tmp_path / "quiz.jsonl"
    task.write_text((json.dumps({"question": "1 + 1 =", "choices": ["2", "3"], "answer": 0}) + "\n") * 64)
    data = tiny_policy(calib_file, task, "http://127.0.0.1:9")["validation"]
    settings = dataclasses.replace(from_dict(ValidationSettings, data).tasks, max_drop=-1.0)
    whole = STAGES["tasks"](tiny_llama, candidate, settings)
    early = STAGES["tasks"](tiny_llama, candidate, settings, until_failed=True)

    assert whole.metrics[0].verdict == early.metrics[0].verdict == "fail"
    assert len(early.details["quiz"]["per_item"]["candidate"]["acc"]) == 32
    assert "quiz: 32 of 64 items scored; its gate is the smallest drop" in " ".join(early.warnings)
