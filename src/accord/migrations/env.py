"""Alembic environment: the engine comes from the caller, never from an ini file."""

from __future__ import annotations

from alembic import context

from accord.models import metadata

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=False,
    )
    context.run_migrations()
