"""The Alembic migrations build exactly the tables the ORM models describe, and each one can be undone."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from bloodcell_core.service.db import alembic_config, upgrade
from bloodcell_core.service.models import Base


def differences(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_models_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'bloodcell.db'}"
    upgrade(url)
    assert differences(url) == []


def test_every_migration_downgrades_and_upgrades_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'bloodcell.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    upgrade(url)
    assert differences(url) == []
