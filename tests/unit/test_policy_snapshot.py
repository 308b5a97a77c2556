"""One policy per run: the first step snapshots the policy file into the lineage database, and an
edit while the run goes on reaches only the next run."""

import hashlib
import shutil

import dagster as dg
import yaml
from sqlalchemy import select

import orchestrator.pipeline.assets as assets_module
from orchestrator.lineage import session_scope
from orchestrator.lineage.models import CalibrationSet, RunPolicy
from orchestrator.pipeline.assets import calibration_set, checkpoint
from orchestrator.pipeline.partitions import CHECKPOINTS
from orchestrator.pipeline.resources import LineageDatabase
from tests.conftest import platform_under


def test_a_policy_edit_mid_run_waits_for_the_next_run(tmp_path, tiny_llama, calib_file, monkeypatch):
    shutil.copytree(tiny_llama, tmp_path / "checkpoints" / "tiny")
    policy_path = tmp_path / "policy.yaml"
    original = yaml.safe_dump({"calibration": {"texts": [str(calib_file)], "n_samples": 4, "seqlen": 64}})
    edited = yaml.safe_dump({"calibration": {"texts": [str(calib_file)], "n_samples": 2, "seqlen": 32}})
    policy_path.write_text(original)

    real_ingest = assets_module.ingest

    def ingest_then_edit(*args):  # the team edits the policy while the run's first step works
        found = real_ingest(*args)
        policy_path.write_text(edited)
        return found

    monkeypatch.setattr(assets_module, "ingest", ingest_then_edit)
    lineage = LineageDatabase(url=f"sqlite:///{tmp_path / 'lineage.db'}")
    resources = {
        "platform": platform_under(tmp_path),
        "lineage": lineage,
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(CHECKPOINTS.name, ["tiny"])
        runs = [
            dg.materialize([checkpoint, calibration_set], partition_key="tiny", instance=instance, resources=resources)
            for _ in range(2)
        ]
    with session_scope(lineage.engine()) as session:
        windows = [(c.n_samples, c.seqlen) for c in session.scalars(select(CalibrationSet).order_by(CalibrationSet.id))]
        snapshots = session.scalars(select(RunPolicy).order_by(RunPolicy.id)).all()
        assert windows == [(4, 64), (2, 32)]  # the first run kept its snapshot; the second took the edit
        assert [s.run_id for s in snapshots] == [r.run_id for r in runs]
        assert [s.text for s in snapshots] == [original, edited]
        assert snapshots[0].hash == hashlib.sha256(original.encode()).hexdigest()
