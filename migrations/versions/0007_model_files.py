"""model versions' files in the database, for workers on other machines

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'model_files',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('model_version_id', sa.Integer(), sa.ForeignKey('model_versions.id'), nullable=False),
        sa.Column('name', sa.String(255), nullable=False),
        sa.Column('sha256', sa.String(64), nullable=False),
        sa.Column('n_bytes', sa.Integer(), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint('model_version_id', 'name'),
    )
    op.create_index('ix_model_files_model_version_id', 'model_files', ['model_version_id'])


def downgrade() -> None:
    op.drop_index('ix_model_files_model_version_id', 'model_files')
    op.drop_table('model_files')
