"""Alembic environment: the URL comes from the caller's Config (orchestrator.lineage.upgrade)."""

from alembic import context
from sqlalchemy import create_engine

from orchestrator.lineage.models import Base

url = context.config.get_main_option("sqlalchemy.url")
if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(url).connect() as connection:
        # batch: SQLite can alter too
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
