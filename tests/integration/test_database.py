"""The lineage database on SQLite and on a real PostgreSQL server; releases, history and rollback."""

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import contextmanager

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from awq_release.errors import DatabaseError, PromotionError, ReleaseError
from deploy.engine import Serving
from deploy.registry import current_version, publish
from deploy.server import free_port
from orchestrator.cli.main import main
from orchestrator.lineage import engine_for, releases, session_scope, upgrade
from orchestrator.lineage.models import Base, Checkpoint, QuantizationRun, ValidationStage
from orchestrator.lineage.queries import record_release, record_stage
from tests.conftest import add_lineage, postgres_cluster
from validation.result import StageResult, gate

TABLES = {
    "checkpoints",
    "calibration_sets",
    "quantization_runs",
    "validation_stages",
    "validation_metrics",
    "releases",
    "release_events",
    "run_policies",
    "release_attempts",
}


@pytest.fixture(scope="session")
def postgres_url():
    with postgres_cluster() as cluster:
        yield cluster.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lineage.db'}"
    url = request.getfixturevalue("postgres_url")
    engine = engine_for(url)
    with engine.begin() as connection:  # a clean schema for every test
        connection.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    engine.dispose()
    return url


def test_migrations_build_the_schema(database_url):
    engine = upgrade(database_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    assert upgrade(database_url).url == engine.url  # idempotent


def test_a_failed_write_commits_nothing(database_url):
    engine = upgrade(database_url)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        session.add(Checkpoint(name="x", path="/x", content_hash="h", architecture="a", size_bytes=1))
        session.flush()
        raise RuntimeError("crash between two writes")
    with session_scope(engine) as session:
        assert session.scalars(select(Checkpoint)).all() == []


def test_history_show_diff_and_rollback(database_url, tmp_path):
    engine = upgrade(database_url)
    registry = tmp_path / "registry"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    versions = []
    for name, increase in (("a", 0.05), ("b", 0.08)):
        run_id = add_lineage(engine, name)
        record_stage(
            engine,
            run_id,
            StageResult("perplexity", [gate("domain perplexity increase", 10.0, 10 * (1 + increase), increase, 0.15)]),
            "/r.json",
        )
        with session_scope(engine) as session:
            row = record_release(
                session, "bot", "promoted", session.get(QuantizationRun, run_id).checkpoint_id, run_id, {"n": name}
            )
            row.path = str(publish(registry, "bot", row.version, model_dir, {"n": name}, "# card", Serving()))
            versions.append(row.version)
    assert versions == ["v0001", "v0002"] and current_version(registry, "bot") == "v0002"

    rows = releases.history(engine, "bot")
    assert [(r["version"], r["status"]) for r in rows] == [("v0001", "promoted"), ("v0002", "promoted")]
    assert rows[1]["gates"]["perplexity.domain perplexity increase"]["value"] == pytest.approx(0.08)
    assert releases.diff(engine, "v0001", "v0002", "bot") == {
        "gate.perplexity.domain perplexity increase": (pytest.approx(10.5), pytest.approx(10.8))
    }

    assert releases.rollback(engine, registry, "bot") == {"model": "bot", "rolled_back": "v0002", "current": "v0001"}
    assert current_version(registry, "bot") == "v0001"
    shown = releases.show(engine, "v0002", "bot")
    assert shown["status"] == "rolled_back" and [e["action"] for e in shown["events"]] == ["promoted", "rolled_back"]
    with pytest.raises(ReleaseError, match="nothing earlier to roll back to"):
        releases.rollback(engine, registry, "bot")
    assert current_version(registry, "bot") == "v0001"


def test_rollback_keeps_registry_and_database_in_step_when_the_commit_fails(tmp_path, monkeypatch):
    engine = upgrade(f"sqlite:///{tmp_path / 'l.db'}")
    registry, model_dir = tmp_path / "registry", tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    for name in ("a", "b"):
        run_id = add_lineage(engine, name)
        with session_scope(engine) as session:
            row = record_release(
                session, "bot", "promoted", session.get(QuantizationRun, run_id).checkpoint_id, run_id, {}
            )
            publish(registry, "bot", row.version, model_dir, {}, "", Serving())

    @contextmanager
    def commit_fails(engine):  # the body runs, then the commit is lost
        with Session(engine) as session:
            yield session
            session.rollback()
            raise OperationalError("COMMIT", {}, Exception("database went away"))

    monkeypatch.setattr(releases, "session_scope", commit_fails)
    with pytest.raises(OperationalError, match="database went away"):
        releases.rollback(engine, registry, "bot")
    monkeypatch.undo()
    assert current_version(registry, "bot") == "v0002"
    assert [r["status"] for r in releases.history(engine, "bot")] == ["promoted", "promoted"]


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(DatabaseError, match=r"unreachable: start it or fix database_url"):
        upgrade(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/lineage")


def history_of(url: str, monkeypatch) -> tuple[int, str]:
    """`awq-release history` in process against `url`: (exit status, stderr)."""
    monkeypatch.setenv("AWQ_RELEASE_DATABASE_URL", url)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(["history"])
    return code, stderr.getvalue()


def test_a_damaged_or_locked_database_says_which(tmp_path, monkeypatch):
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not sqlite at all\n" * 512)
    code, stderr = history_of(f"sqlite:///{damaged}", monkeypatch)
    assert code == 2 and stderr.startswith("error: ") and "is damaged or not a database" in stderr
    assert len(stderr.strip().splitlines()) == 1
    locked = tmp_path / "locked.db"
    upgrade(f"sqlite:///{locked}").dispose()
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write
    try:
        code, stderr = history_of(f"sqlite:///{locked}?timeout=0.2", monkeypatch)
    finally:
        holder.close()
    assert code == 2 and "is locked by another process" in stderr and "unreachable" not in stderr


def test_stage_rows_keep_every_metric(database_url):
    engine = upgrade(database_url)
    run_id = add_lineage(engine)
    result = StageResult(
        "load",
        [
            gate("c=1 TTFT p90 s", None, 0.5, 0.5, 0.2),
            gate("c=1 output tokens/s", None, 30.0, 30.0, 1.0, higher_is_better=True),
        ],
    )
    record_stage(engine, run_id, result, "/load.json")
    with session_scope(engine) as session:
        stage = session.scalars(select(ValidationStage)).one()
        assert stage.passed is False and stage.reasons == result.reasons
        assert [(m.metric, m.baseline, m.passed) for m in stage.metrics] == [
            ("c=1 TTFT p90 s", None, False),
            ("c=1 output tokens/s", None, True),
        ]


def test_publish_never_copies_what_a_link_points_to(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "notes.txt").symlink_to(secret)
    with pytest.raises(PromotionError, match=r"holds links \(notes.txt\)"):
        publish(tmp_path / "registry", "bot", "v0001", model_dir, {}, "# card", Serving())
    assert not (tmp_path / "registry" / "bot" / "releases" / "v0001").exists()
    assert current_version(tmp_path / "registry", "bot") is None


def test_migrations_build_what_the_models_declare(database_url):
    engine = upgrade(database_url)
    with engine.connect() as connection:
        drift = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert drift == []


# The history commands answer from the database: they must not wait for the model stacks to import.
HISTORY_ONLY = """
import json, sys
from orchestrator.cli.main import main
main(["history", "--json"])
print(json.dumps([m for m in ("transformers", "vllm", "matplotlib", "safetensors") if m in sys.modules]))
"""


def test_history_imports_no_model_stack(tmp_path):
    env = {"AWQ_RELEASE_DATABASE_URL": f"sqlite:///{tmp_path / 'lineage.db'}", "AWQ_RELEASE_HOME": str(tmp_path)}
    ran = subprocess.run([sys.executable, "-c", HISTORY_ONLY], capture_output=True, text=True, env=os.environ | env)
    history, imported = ran.stdout.strip().rsplit("\n", 1)
    assert ran.returncode == 0 and json.loads(history) == [] and json.loads(imported) == [], ran.stderr
