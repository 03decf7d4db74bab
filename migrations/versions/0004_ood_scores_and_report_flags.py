"""out-of-distribution scores and report flags

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('predictions') as batch:
        batch.add_column(sa.Column('ood_score', sa.Float(), nullable=True))
    with op.batch_alter_table('sample_reports') as batch:
        batch.add_column(sa.Column('ood_threshold', sa.Float(), nullable=True))
        batch.add_column(sa.Column('n_unfamiliar', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('flags', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('sample_reports') as batch:
        batch.drop_column('flags')
        batch.drop_column('n_unfamiliar')
        batch.drop_column('ood_threshold')
    with op.batch_alter_table('predictions') as batch:
        batch.drop_column('ood_score')
