"""Nothing is measured twice: a stage's figures of one model are kept at the address of everything they
depend on (validation.memo) and found by the next run that needs them; the power check's table is
reused by a fine-tune of the same base model under the same settings, and the card says where it was
measured. Any changed input is measured again."""

import dataclasses
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy import select

from awq_core import QuantConfig
from awq_core.compute import resolve
from awq_release.settings import from_dict
from orchestrator.lineage import session_scope
from orchestrator.lineage.models import Measurement, PowerCheckOutcome
from orchestrator.lineage.queries import lineage_of
from orchestrator.lineage.rows import power_check_record
from orchestrator.pipeline.assets import RECOMPUTE_TAG, awq_model, calibration_set, checkpoint, power_check
from orchestrator.pipeline.partitions import CHECKPOINTS
from orchestrator.pipeline.resources import LineageDatabase
from orchestrator.release.reports import power_summary
from tests.conftest import make_tiny_model, platform_under, tiny_policy
from validation import models, run_stage
from validation.memo import Known, MemoryStore
from validation.power import power_check_address
from validation.settings import ValidationSettings

FINE_TUNES = ("tiny", "tuned")  # two fine-tunes of one base: the same config and tokenizer, other weights


@pytest.fixture
def candidate(rtn_candidate) -> Path:
    return rtn_candidate


def settings_for(text: Path, task: Path) -> ValidationSettings:
    return from_dict(ValidationSettings, tiny_policy(text, task, "http://127.0.0.1:9")["validation"])


@pytest.fixture
def count_loads(monkeypatch) -> list[Path]:
    loads, real_load = [], models.load_model
    monkeypatch.setattr(
        models, "load_model", lambda path, compute=None: loads.append(Path(path)) or real_load(path, compute)
    )
    return loads


def test_a_stage_finds_each_models_figures_at_their_address(
    tmp_path, tiny_llama, candidate, calib_file, task_files, count_loads
):
    text = Path(shutil.copy(calib_file, tmp_path / "domain.txt"))
    settings = settings_for(text, task_files["world_capitals"])
    known = Known(MemoryStore(), {str(tiny_llama): "base-hash", str(candidate): "candidate-hash"})

    first = run_stage("perplexity", tiny_llama, candidate, settings, known=known)
    assert count_loads == [tiny_llama, candidate] and first.reused == []
    again = run_stage("perplexity", tiny_llama, candidate, settings, known=known)
    assert count_loads == [tiny_llama, candidate] and again.reused == ["baseline", "candidate"]
    assert again.metrics == first.metrics  # the same gate, to the last bit

    strided = dataclasses.replace(settings.perplexity, stride=32)
    run_stage("perplexity", tiny_llama, candidate, dataclasses.replace(settings, perplexity=strided), known=known)
    assert len(count_loads) == 4  # another setting: both measured again
    text.write_text(text.read_text() + " One more held-out sentence.")
    edited = run_stage("perplexity", tiny_llama, candidate, settings, known=known)
    assert len(count_loads) == 6 and edited.reused == []  # the same file name, other content
    run_stage("tasks", tiny_llama, candidate, settings, known=Known(known.store, {str(tiny_llama): "base-hash"}))
    assert count_loads[6:] == [tiny_llama, candidate]  # another stage; a folder with no content hash is measured


def test_the_power_check_is_addressed_by_settings_and_base_not_by_the_fine_tunes_weights(
    tmp_path, tokenizer_dir, tiny_llama, calib_file, task_files
):
    settings = settings_for(calib_file, task_files["world_capitals"])
    compute, quantization = resolve(), QuantConfig().fingerprint()

    def address(model: Path = tiny_llama, s: ValidationSettings = settings, q: str = quantization) -> str:
        return power_check_address(model, s, q, compute)

    tuned = make_tiny_model(tmp_path / "tuned", tokenizer_dir, seed=1)
    not_run = dataclasses.replace(settings.power_check, run=False)
    slower = dataclasses.replace(settings.load, requests_per_level=99)
    assert address() == address(tuned)  # another fine-tune of the same base
    assert address() == address(s=dataclasses.replace(settings, power_check=not_run, load=slower))
    wider = make_tiny_model(tmp_path / "wider", tokenizer_dir, hidden=256)
    stricter = dataclasses.replace(settings.perplexity, max_increase=0.01)
    changed = [
        address(wider),
        address(s=dataclasses.replace(settings, perplexity=stricter)),
        address(q=QuantConfig(group_size=32).fingerprint()),
    ]
    assert address() not in changed and len(set(changed)) == 3


def release_steps(home: Path, key: str, tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    steps = [
        checkpoint,
        calibration_set,
        dg.asset(name="awq_model", partitions_def=CHECKPOINTS)(awq_model),
        dg.asset(name="power_check", partitions_def=CHECKPOINTS)(power_check),
    ]
    resources = {"platform": platform_under(home), "lineage": LineageDatabase(url=f"sqlite:///{home / 'lineage.db'}")}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CHECKPOINTS.name, [key])
        return dg.materialize(steps, partition_key=key, instance=instance, resources=resources, tags=tags)


def test_a_fine_tune_of_the_same_base_reuses_the_power_check_and_says_where(
    tmp_path, tokenizer_dir, calib_file, task_files
):
    for seed, name in enumerate(FINE_TUNES):
        make_tiny_model(tmp_path / "checkpoints" / name, tokenizer_dir, seed=seed)
    policy = tiny_policy(calib_file, task_files["world_capitals"], "http://127.0.0.1:9")
    policy["validation"]["power_check"] = {"run": True, "damages": ["zeroed_mlp"]}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))

    first = release_steps(tmp_path, "tiny").asset_materializations_for_node("power_check")[0].metadata
    second = release_steps(tmp_path, "tuned").asset_materializations_for_node("power_check")[0].metadata
    assert first["reused_outcomes"].value == [] and first["seconds"].value > 0
    assert second["reused_outcomes"].value == [1] and second["seconds"].value == 0.0
    assert second["table"] == first["table"]

    with session_scope(LineageDatabase(url=f"sqlite:///{tmp_path / 'lineage.db'}").engine()) as session:
        outcomes = session.scalars(select(PowerCheckOutcome).order_by(PowerCheckOutcome.id)).all()
        assert [(o.quantization_run_id, o.reused_from_id) for o in outcomes] == [(1, None), (2, 1)]
        assert outcomes[0].address == outcomes[1].address
        # the first check kept the baseline's figures of each stage; the second measured nothing
        assert sorted(m.stage for m in session.scalars(select(Measurement))) == ["long_context", "perplexity", "tasks"]
        chain = lineage_of(session, 2)
        assert chain.power_check_measured_on == "quantization run 1 of checkpoint tiny, which was not released"
        summary = power_summary(power_check_record(chain.power_check, chain.power_check_measured_on))
    assert "Measured on quantization run 1 of checkpoint tiny" in summary and "not run again" in summary


def test_a_run_tagged_recompute_reuses_nothing(tmp_path, tokenizer_dir, calib_file, task_files):
    """`awq-release run --recompute` tags its runs so: the same checkpoint is quantized and checked again."""
    make_tiny_model(tmp_path / "checkpoints" / "tiny", tokenizer_dir)
    policy = tiny_policy(calib_file, task_files["world_capitals"], "http://127.0.0.1:9")
    policy["validation"]["power_check"] = {"run": True, "damages": ["zeroed_mlp"], "stages": ["perplexity"]}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))

    release_steps(tmp_path, "tiny")
    reused = release_steps(tmp_path, "tiny")
    again = release_steps(tmp_path, "tiny", {RECOMPUTE_TAG: "true"})
    assert reused.asset_materializations_for_node("awq_model")[0].metadata["reused_from_run"].value == 1
    assert reused.asset_materializations_for_node("power_check")[0].metadata["reused_outcomes"].value == [1]
    assert "reused_from_run" not in again.asset_materializations_for_node("awq_model")[0].metadata
    assert again.asset_materializations_for_node("power_check")[0].metadata["reused_outcomes"].value == []
    with session_scope(LineageDatabase(url=f"sqlite:///{tmp_path / 'lineage.db'}").engine()) as session:
        outcomes = session.scalars(select(PowerCheckOutcome).order_by(PowerCheckOutcome.id)).all()
        assert [(o.quantization_run_id, o.reused_from_id) for o in outcomes] == [(1, None), (2, 1), (3, None)]
