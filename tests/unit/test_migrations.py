"""The Alembic migrations build exactly the tables the ORM models describe, and each one can be undone."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from bloodcell_core.service.db import alembic_config, upgrade
from bloodcell_core.service.tables import Base


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


def test_migration_0010_fills_the_running_totals_from_the_history(tmp_path):
    """The scrape's counters go on from the totals the cells held before the upgrade, not from zero."""
    url = f"sqlite:///{tmp_path / 'bloodcell.db'}"
    command.upgrade(alembic_config(url), "0009")
    engine = create_engine(url)
    rows = [
        "INSERT INTO model_versions (id, version, plugin, artifact_path, status, classes, metrics, data_fingerprint, created_at) "
        "VALUES (1, 'v1', 'p', 'a', 'production', '[]', '{}', 'f', '2026-01-01')",
        "INSERT INTO samples (id, accession_id, status, report_status, created_at, updated_at) "
        "VALUES (1, 'S-1', 'done', 'final', '2026-01-01', '2026-01-01')",
        *(f"INSERT INTO images (sha256, n_bytes, created_at) VALUES ('{c * 64}', 1, '2026-01-01')" for c in "abc"),
        *(f"INSERT INTO sample_images (sample_id, image_sha256, name, status) VALUES (1, '{c * 64}', '{c}', 'done')" for c in "abc"),
        "INSERT INTO sample_reports (sample_id, model_version_id, n_cells, n_classified, n_failed, counts, percent, blast_count, "
        "blast_percent, blast_flag, review_threshold, ood_threshold, n_unfamiliar, flags, needs_review, failed, created_at) "
        "VALUES (1, 1, 3, 3, 0, '{}', '{}', 0, 0, 0, 0.9, 10.0, 0, '[]', '[]', '[]', '2026-01-01')",
        # a: sure and familiar; b: unsure; c: unfamiliar; all three the model's "monocyte"
        *(
            "INSERT INTO predictions (image_sha256, model_version_id, label, confidence, probabilities, preprocess_ms, "
            f"predict_ms, ood_score, worker, created_at) VALUES ('{c * 64}', 1, 'monocyte', {p}, '{{}}', 1, 1, {ood}, 'w', "
            "'2026-01-01')"
            for c, p, ood in (("a", 0.99, 1.0), ("b", 0.5, 1.0), ("c", 0.99, 50.0))
        ),
        "INSERT INTO cell_reviews (sample_id, image_sha256, previous_label, label, reviewer, reason, created_at) "
        "VALUES (1, '" + "b" * 64 + "', 'monocyte', 'lymphocyte', 'anna', 'r', '2026-01-01')",
    ]
    with engine.begin() as connection:
        for row in rows:
            connection.exec_driver_sql(row)
    upgrade(url)
    with engine.connect() as connection:
        cells = connection.exec_driver_sql(
            "SELECT model_version_id, label, n_classified, n_sent_to_review, n_unfamiliar FROM cell_counts"
        )
        relabels = connection.exec_driver_sql("SELECT model_version_id, from_label, to_label, n FROM relabel_counts")
        assert cells.all() == [(1, "monocyte", 3, 2, 1)] and relabels.all() == [(1, "monocyte", "lymphocyte", 1)]
    engine.dispose()
