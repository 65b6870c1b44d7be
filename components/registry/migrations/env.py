"""Alembic environment: runs on the connection that `database.upgrade_to_head` passes in."""

from __future__ import annotations

from alembic import context

from components.registry.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic_config()` without a connection, e.g. to autogenerate a revision
    from components.registry.database import make_engine
    from components.settings import get_settings

    with make_engine(get_settings().database_url).begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():  # a no-op inside the caller's transaction
        context.run_migrations()
