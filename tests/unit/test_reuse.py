"""Finished work is never done twice: a quantized model is addressed by what it was made from and
reused by a retry, recorded as reused; any changed input, or a changed output, makes it afresh. The
address holds because the quantizer is deterministic: two processes make the same bytes
(tests/integration/test_console_scripts.py)."""

from pathlib import Path

import dagster as dg
import pytest
import yaml
from sqlalchemy import select

import orchestrator.pipeline.assets as assets_module
from orchestrator.lineage import session_scope
from orchestrator.lineage.models import QuantizationRun
from orchestrator.pipeline.assets import awq_model, calibration_set, checkpoint, output_hash
from orchestrator.pipeline.partitions import CHECKPOINTS
from orchestrator.pipeline.resources import LineageDatabase
from tests.conftest import FAST, make_tiny_model, platform_under

STEPS = [checkpoint, calibration_set, dg.asset(name="awq_model", partitions_def=CHECKPOINTS)(awq_model)]


@pytest.fixture
def platform_home(tmp_path, tokenizer_dir, calib_file) -> Path:
    make_tiny_model(tmp_path / "checkpoints" / "tiny", tokenizer_dir)
    write_policy(tmp_path, calib_file)
    return tmp_path


def write_policy(home: Path, calib_file: Path, **extra) -> None:
    calibration = {"texts": [str(calib_file)], "n_samples": 4, "seqlen": 64}
    (home / "policy.yaml").write_text(yaml.safe_dump({"calibration": calibration, "quantization": FAST} | extra))


def quantization_runs(home: Path) -> list[QuantizationRun]:
    with session_scope(LineageDatabase(url=f"sqlite:///{home / 'lineage.db'}").engine()) as session:
        runs = session.scalars(select(QuantizationRun).order_by(QuantizationRun.id)).all()
        session.expunge_all()
        return runs


def release_steps(home: Path) -> dg.ExecuteInProcessResult:
    resources = {"platform": platform_under(home), "lineage": LineageDatabase(url=f"sqlite:///{home / 'lineage.db'}")}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CHECKPOINTS.name, ["tiny"])
        return dg.materialize(STEPS, partition_key="tiny", instance=instance, resources=resources)


def forbid_quantizing(monkeypatch) -> None:
    def quantize(*args, **kwargs):
        raise AssertionError("quantized again although a finished model had the same inputs")

    monkeypatch.setattr(assets_module, "quantize", quantize)


def test_a_retry_reuses_the_finished_model_and_records_the_reuse(platform_home, monkeypatch):
    release_steps(platform_home)
    (made,) = quantization_runs(platform_home)
    out_dir = Path(made.output_path)
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}

    forbid_quantizing(monkeypatch)
    result = release_steps(platform_home)
    made_again, reused = quantization_runs(platform_home)
    assert reused.reused_from_id == made.id and reused.address == made.address and reused.seconds == 0.0
    assert reused.output_path == made.output_path and reused.output_hash == made.output_hash == output_hash(out_dir)
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == before  # not a file rewritten
    metadata = result.asset_materializations_for_node("awq_model")[0].metadata
    assert metadata["reused_from_run"].value == made.id


@pytest.mark.parametrize("change", ["settings", "policy says recompute", "output edited"])
def test_a_changed_input_or_output_is_made_afresh(platform_home, calib_file, change):
    release_steps(platform_home)
    (made,) = quantization_runs(platform_home)
    if change == "settings":
        write_policy(platform_home, calib_file, quantization=FAST | {"n_grid": 12})
    elif change == "policy says recompute":
        write_policy(platform_home, calib_file, reuse=False)
    else:
        (Path(made.output_path) / "config.json").write_text("{}")
    release_steps(platform_home)
    _, remade = quantization_runs(platform_home)
    assert remade.reused_from_id is None and remade.seconds > 0
    assert (remade.address != made.address) == (change == "settings")
    assert remade.output_hash == output_hash(Path(remade.output_path))
