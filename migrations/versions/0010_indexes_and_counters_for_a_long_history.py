"""indexes for the pages and retention of a long history; running totals of cells and relabels for the scrape

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# the totals so far, as the scrape used to derive them on every scrape (once, here)
BACKFILL_CELL_COUNTS = """
INSERT INTO cell_counts (model_version_id, label, n_classified, n_sent_to_review, n_unfamiliar)
SELECT r.model_version_id, p.label, count(*),
       sum(CASE WHEN p.confidence < r.review_threshold
                  OR (r.ood_threshold IS NOT NULL AND p.ood_score > r.ood_threshold) THEN 1 ELSE 0 END),
       sum(CASE WHEN r.ood_threshold IS NOT NULL AND p.ood_score > r.ood_threshold THEN 1 ELSE 0 END)
FROM sample_images c
JOIN sample_reports r ON r.sample_id = c.sample_id
JOIN predictions p ON p.image_sha256 = c.image_sha256 AND p.model_version_id = r.model_version_id
GROUP BY r.model_version_id, p.label
"""
BACKFILL_RELABEL_COUNTS = """
INSERT INTO relabel_counts (model_version_id, from_label, to_label, n)
SELECT r.model_version_id, coalesce(v.previous_label, 'none'), v.label, count(*)
FROM cell_reviews v
JOIN sample_reports r ON r.sample_id = v.sample_id
GROUP BY r.model_version_id, coalesce(v.previous_label, 'none'), v.label
"""


def upgrade() -> None:
    op.create_table(
        'cell_counts',
        sa.Column('model_version_id', sa.Integer(), sa.ForeignKey('model_versions.id'), primary_key=True),
        sa.Column('label', sa.String(64), primary_key=True),
        sa.Column('n_classified', sa.BigInteger(), nullable=False),
        sa.Column('n_sent_to_review', sa.BigInteger(), nullable=False),
        sa.Column('n_unfamiliar', sa.BigInteger(), nullable=False),
    )
    op.create_table(
        'relabel_counts',
        sa.Column('model_version_id', sa.Integer(), sa.ForeignKey('model_versions.id'), primary_key=True),
        sa.Column('from_label', sa.String(64), primary_key=True),
        sa.Column('to_label', sa.String(64), primary_key=True),
        sa.Column('n', sa.BigInteger(), nullable=False),
    )
    op.execute(BACKFILL_CELL_COUNTS)
    op.execute(BACKFILL_RELABEL_COUNTS)
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.drop_index('ix_samples_status')
        batch_op.create_index('ix_samples_status_created_at', ['status', 'created_at'], unique=False)
        batch_op.create_index('ix_samples_created_at', ['created_at'], unique=False)
    with op.batch_alter_table('sample_images', schema=None) as batch_op:
        batch_op.create_index('ix_sample_images_image_sha256', ['image_sha256'], unique=False)
        batch_op.create_index('ix_sample_images_field_sha256', ['field_sha256'], unique=False)
    with op.batch_alter_table('sample_fields', schema=None) as batch_op:
        batch_op.create_index('ix_sample_fields_image_sha256', ['image_sha256'], unique=False)
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_subject_id', ['subject', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_subject_id')
    with op.batch_alter_table('sample_fields', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_fields_image_sha256')
    with op.batch_alter_table('sample_images', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_images_field_sha256')
        batch_op.drop_index('ix_sample_images_image_sha256')
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.drop_index('ix_samples_created_at')
        batch_op.drop_index('ix_samples_status_created_at')
        batch_op.create_index('ix_samples_status', ['status'], unique=False)
    op.drop_table('relabel_counts')
    op.drop_table('cell_counts')
