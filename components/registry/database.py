"""Engines for the registry's database and the schema upgrade (Alembic, configured in code).

To write a new migration after changing `schema.py`:

    from alembic import command
    from components.registry.database import alembic_config
    command.revision(alembic_config(), "what changed", autogenerate=True)   # uses ATTRFLOW_DB_URL

then edit the generated file under `migrations/versions/` and name it `000N_...py`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant: the PostgreSQL advisory lock that lets one process at a time upgrade the schema.
_PG_UPGRADE_LOCK = 7_420_001


def make_engine(url: str) -> Engine:
    sqlite = url.startswith("sqlite")
    engine = create_engine(
        url, json_serializer=_json_dumps, pool_pre_ping=not sqlite, connect_args={"timeout": 30} if sqlite else {}
    )
    if engine.dialect.name == "sqlite":
        _serialize_sqlite_writes(engine)
    return engine


def _serialize_sqlite_writes(engine: Engine) -> None:
    """Every SQLite transaction takes the write lock at BEGIN (waiting up to the 30 s timeout).

    Python's sqlite3 begins transactions lazily and not before DDL; a transaction that reads
    and then writes can then fail at once with "database is locked" when another process
    wrote in between. BEGIN IMMEDIATE makes the database's transactions run one at a time,
    which is what the version numbering and the schema upgrade need. The registry's
    transactions are short, so readers waiting a moment is fine.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _json_dumps(value: Any) -> str:
    return json.dumps(_plain(value))


def _plain(value: Any) -> Any:
    """Numpy values as Python ones; NaN and infinities as null (PostgreSQL's json rejects them,
    and evaluation metrics can hold NaN). The same on every backend."""
    if type(value).__module__ == "numpy":
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def alembic_config(connection: Any = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection  # env.py uses it (None: the settings' URL)
    return cfg


def upgrade_to_head(engine: Engine) -> None:
    """Bring the schema to the latest migration. Idempotent; concurrent callers take turns."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return  # the usual case: nothing to do, no lock taken
    # One transaction holding the lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock,
    # its DDL is transactional). A process that waited finds the schema at head and does nothing.
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})
        command.upgrade(alembic_config(conn), "head")
