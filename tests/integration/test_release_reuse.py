"""A release's finished work found by the next one, through the assets materialized in process: a
fine-tune of the same base reuses the power check's table and its card says where it was measured;
a run tagged recompute reuses nothing. (The addresses themselves: tests/unit/test_measurement_reuse.py.)"""

from pathlib import Path

import dagster as dg
import yaml
from sqlalchemy import select

from orchestrator.lineage import session_scope
from orchestrator.lineage.models import Measurement, PowerCheckOutcome
from orchestrator.lineage.queries import lineage_of
from orchestrator.lineage.rows import power_check_record
from orchestrator.pipeline.assets import RECOMPUTE_TAG, awq_model, calibration_set, checkpoint, power_check
from orchestrator.pipeline.partitions import CHECKPOINTS
from orchestrator.pipeline.resources import LineageDatabase, ScoringEngines
from orchestrator.release.reports import power_summary
from tests.conftest import make_tiny_model, platform_under, tiny_policy

FINE_TUNES = ("tiny", "tuned")  # two fine-tunes of one base: the same config and tokenizer, other weights


def release_steps(home: Path, key: str, tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
    steps = [
        checkpoint,
        calibration_set,
        dg.asset(name="awq_model", partitions_def=CHECKPOINTS)(awq_model),
        dg.asset(name="power_check", partitions_def=CHECKPOINTS)(power_check),
    ]
    resources = {
        "platform": platform_under(home),
        "lineage": LineageDatabase(url=f"sqlite:///{home / 'lineage.db'}"),
        "scoring": ScoringEngines(),
    }
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
