"""Database engines, sessions and migrations (the tables are in ``tables.py``)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Iterator, TypeVar

from sqlalchemy import (
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from bloodcell_core.config import PROJECT_ROOT, masked_url
from bloodcell_core.service.tables import Base

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"

RowT = TypeVar("RowT", bound=Base)


class DatabaseNotMigrated(RuntimeError):
    pass


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (the LIMS) do not block the writing worker
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def insert_new(session: Session, model: type[Base], rows: list[dict[str, Any]], key: list[str]) -> None:
    """Bulk insert; a row whose KEY exists already (a redelivery, a concurrent submission) is left as it is."""
    if not rows:
        return
    dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(dialect_insert(model).on_conflict_do_nothing(index_elements=key), rows)


def add_to_counts(session: Session, model: type[Base], key: dict[str, Any], increments: dict[str, int]) -> None:
    """Add INCREMENTS to the counter columns of the row of running totals at KEY, created at zero if new;
    one statement, so concurrent workers adding to the same row never lose a count."""
    dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = dialect_insert(model).values(**key, **increments)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=list(key), set_={column: getattr(model, column) + statement.excluded[column] for column in increments}
        )
    )


def get_row(session: Session, model: type[RowT], key: Any, **options: Any) -> RowT:
    """``session.get`` for a row that must exist (a foreign key points at it): LookupError when it does not."""
    row = session.get(model, key, **options)
    if row is None:
        raise LookupError(f"no {model.__tablename__} row {key!r}")
    return row


@cache
def get_engine(url: str) -> Engine:
    """One engine per URL and process. A forked child (a Celery pool process) must not use its parent's pooled
    connections: after the fork it drops them without closing them (``dispose(close=False)``) and opens its own."""
    engine = _create_engine(url)
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return engine


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back on an exception."""
    session = sessionmaker(get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def require_migrated(url: str) -> None:
    """Refuse to run against a database whose schema is not at the latest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with get_engine(url).connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"the database {masked_url(url)} is at migration "
            f"{current or 'none (empty)'}, this bloodcell needs {head}: run `bloodcell db upgrade`"
        )
