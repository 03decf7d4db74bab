"""whole smear fields and the cells located in them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sample_fields',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('sample_id', sa.Integer(), sa.ForeignKey('samples.id'), nullable=False),
        sa.Column('image_sha256', sa.String(64), sa.ForeignKey('images.sha256'), nullable=False),
        sa.Column('name', sa.String(512), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('width', sa.Integer(), nullable=True),
        sa.Column('height', sa.Integer(), nullable=True),
        sa.Column('n_cells', sa.Integer(), nullable=True),
        sa.Column('locator', sa.String(128), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('sample_id', 'image_sha256'),
    )
    op.create_index('ix_sample_fields_sample_id', 'sample_fields', ['sample_id'])
    with op.batch_alter_table('sample_images') as batch:
        batch.add_column(sa.Column('field_sha256', sa.String(64), nullable=True))
        batch.add_column(sa.Column('box_x', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('box_y', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('box_width', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('box_height', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('touches_edge', sa.Boolean(), nullable=True))
        batch.create_foreign_key('fk_sample_images_field_sha256', 'images', ['field_sha256'], ['sha256'])


def downgrade() -> None:
    with op.batch_alter_table('sample_images') as batch:
        batch.drop_constraint('fk_sample_images_field_sha256', type_='foreignkey')
        for column in ('touches_edge', 'box_height', 'box_width', 'box_y', 'box_x', 'field_sha256'):
            batch.drop_column(column)
    op.drop_index('ix_sample_fields_sample_id', 'sample_fields')
    op.drop_table('sample_fields')
