"""webhook deliveries record the task that carries them and when their next attempt is due, for the sweep

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-09
"""
import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_webhook_deliveries_status_due_at', ['status', 'due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_sample_id'), ['sample_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_sample_id'))
        batch_op.drop_index('ix_webhook_deliveries_status_due_at')
        batch_op.drop_column('due_at')
        batch_op.drop_column('task_id')
