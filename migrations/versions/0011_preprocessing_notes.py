"""preprocessing notes: a step's fallback on a cell ("scale not measured"), per prediction and counted per report

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # earlier predictions and reports were made without notes: the empty list and mapping say so
    with op.batch_alter_table('predictions') as batch:
        batch.add_column(sa.Column('preprocessing_notes', sa.JSON(), server_default='[]', nullable=False))
    with op.batch_alter_table('sample_reports') as batch:
        batch.add_column(sa.Column('preprocessing_notes', sa.JSON(), server_default='{}', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('sample_reports') as batch:
        batch.drop_column('preprocessing_notes')
    with op.batch_alter_table('predictions') as batch:
        batch.drop_column('preprocessing_notes')
