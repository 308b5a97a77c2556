"""The lineage database: SQLAlchemy models, Alembic migrations, engine and sessions."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from awq_release.errors import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _unreachable(engine: Engine, error: OperationalError) -> DatabaseError:
    return DatabaseError(
        f"The lineage database at {engine.url.render_as_string(hide_password=True)} is unreachable "
        f"({str(error.orig).splitlines()[0]}): start it or fix database_url. The transaction was rolled back "
        "whole: nothing of it was recorded."
    )


def engine_for(url: str) -> Engine:
    """An engine whose first connection proves the database answers, with an error that says what to fix."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as e:
        raise _unreachable(engine, e) from e
    return engine


def upgrade(url: str) -> Engine:
    """Bring the schema to the newest revision (`alembic upgrade head`) and return an engine."""
    engine = engine_for(url)
    command.upgrade(alembic_config(url), "head")
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed whole on success, rolled back whole on any error. A database that
    went away midway is a DatabaseError that says so."""
    try:
        with sessionmaker(engine, expire_on_commit=False)() as session, session.begin():
            yield session
    except OperationalError as e:
        raise _unreachable(engine, e) from e
