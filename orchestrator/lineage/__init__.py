"""The lineage database: what happened to every checkpoint. Engine and sessions here; the tables in
models.py (Alembic migrations in migrations/); queries.py records and reads rows; rows.py turns them
into plain figures; releases.py answers history, show, diff and rollback."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DatabaseError as SQLAlchemyDatabaseError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from awq_release.errors import DatabaseError

MIGRATIONS = Path(__file__).parent / "migrations"
DAMAGED = ("not a database", "malformed")  # what SQLite says of a file that is not a sound database


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _unusable(engine: Engine, error: SQLAlchemyDatabaseError) -> DatabaseError:
    """What is wrong with the database, as the driver said it, and what to do about it."""
    detail = (str(error.orig).splitlines() or [type(error.orig).__name__])[0]
    if "locked" in detail or "lock timeout" in detail:
        what = "is locked by another process: wait for it, or stop what holds the lock, and run again."
    elif any(word in detail for word in DAMAGED):
        what = "is damaged or not a database: restore it from a backup or point database_url at another."
    else:
        what = "is unreachable: start it or fix database_url."
    where = engine.url.render_as_string(hide_password=True)
    return DatabaseError(
        f"The lineage database at {where} {what} ({detail}) The transaction was rolled back whole: nothing of it "
        "was recorded."
    )


def _is_the_database(error: SQLAlchemyDatabaseError) -> bool:
    """The database itself failed (gone, locked, damaged), as opposed to a statement the code got wrong."""
    return isinstance(error, OperationalError) or any(word in str(error.orig) for word in DAMAGED)


@contextmanager
def _database_errors_clear(engine: Engine) -> Iterator[None]:
    """A failure of the database itself becomes one DatabaseError that says what to do; a statement
    the code got wrong (an integrity error) stays the bug it is."""
    try:
        yield
    except SQLAlchemyDatabaseError as e:
        if not _is_the_database(e):
            raise
        raise _unusable(engine, e) from e


def engine_for(url: str) -> Engine:
    """An engine whose first connection proves the database answers, with an error that says what to fix."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    with _database_errors_clear(engine), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return engine


def upgrade(url: str) -> Engine:
    """Bring the schema to the newest revision (`alembic upgrade head`) and return an engine."""
    engine = engine_for(url)
    with _database_errors_clear(engine):
        command.upgrade(alembic_config(url), "head")
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed whole on success, rolled back whole on any error. A database that
    went away midway is a DatabaseError that says so."""
    with _database_errors_clear(engine), sessionmaker(engine, expire_on_commit=False)() as session, session.begin():
        yield session
