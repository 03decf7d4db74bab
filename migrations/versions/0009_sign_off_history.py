"""sign-offs approve one report version and are kept as a history; reports count their versions

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sign_offs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sample_id', sa.Integer(), nullable=False),
        sa.Column('report_version', sa.Integer(), nullable=False),
        sa.Column('report_status', sa.String(length=16), nullable=False),
        sa.Column('signed_by', sa.String(length=128), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('comment', sa.Text(), nullable=False),
        sa.Column('confirmed', sa.JSON(), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('percent', sa.JSON(), nullable=False),
        sa.Column('flags', sa.JSON(), nullable=False),
        sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['sample_id'], ['samples.id'], ),
        sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sign_offs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sign_offs_sample_id'), ['sample_id'], unique=False)
    with op.batch_alter_table('sample_reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), server_default='1', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('sample_reports', schema=None) as batch_op:
        batch_op.drop_column('version')
    with op.batch_alter_table('sign_offs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sign_offs_sample_id'))
    op.drop_table('sign_offs')
