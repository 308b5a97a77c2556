"""lineage schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 06:00:55.389563
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('base_model', sa.Text(), nullable=True),
    sa.Column('adapter_path', sa.Text(), nullable=True),
    sa.Column('architecture', sa.String(length=128), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkpoints')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_checkpoints_content_hash'))
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoints_name'), ['name'], unique=False)

    op.create_table('calibration_sets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('checkpoint_id', sa.Integer(), nullable=False),
    sa.Column('source_hashes', sa.JSON(), nullable=False),
    sa.Column('n_samples', sa.Integer(), nullable=False),
    sa.Column('seqlen', sa.Integer(), nullable=False),
    sa.Column('tokens_path', sa.Text(), nullable=False),
    sa.Column('tokens_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], name=op.f('fk_calibration_sets_checkpoint_id_checkpoints')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibration_sets'))
    )
    op.create_table('quantization_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('checkpoint_id', sa.Integer(), nullable=False),
    sa.Column('calibration_set_id', sa.Integer(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('peak_rss_mb', sa.Float(), nullable=False),
    sa.Column('layer_errors', sa.JSON(), nullable=False),
    sa.Column('block_mse', sa.JSON(), nullable=False),
    sa.Column('output_path', sa.Text(), nullable=False),
    sa.Column('output_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['calibration_set_id'], ['calibration_sets.id'], name=op.f('fk_quantization_runs_calibration_set_id_calibration_sets')),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], name=op.f('fk_quantization_runs_checkpoint_id_checkpoints')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quantization_runs'))
    )
    op.create_table('releases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('checkpoint_id', sa.Integer(), nullable=False),
    sa.Column('quantization_run_id', sa.Integer(), nullable=True),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], name=op.f('fk_releases_checkpoint_id_checkpoints')),
    sa.ForeignKeyConstraint(['quantization_run_id'], ['quantization_runs.id'], name=op.f('fk_releases_quantization_run_id_quantization_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_releases')),
    sa.UniqueConstraint('model', 'version', name=op.f('uq_releases_model'))
    )
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_releases_model'), ['model'], unique=False)

    op.create_table('validation_stages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('quantization_run_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('warnings', sa.JSON(), nullable=False),
    sa.Column('report_path', sa.Text(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['quantization_run_id'], ['quantization_runs.id'], name=op.f('fk_validation_stages_quantization_run_id_quantization_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_validation_stages'))
    )
    with op.batch_alter_table('validation_stages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_validation_stages_quantization_run_id'), ['quantization_run_id'], unique=False)

    op.create_table('release_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('release_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], name=op.f('fk_release_events_release_id_releases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_release_events'))
    )
    with op.batch_alter_table('release_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_release_events_release_id'), ['release_id'], unique=False)

    op.create_table('validation_metrics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage_id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=128), nullable=False),
    sa.Column('baseline', sa.Float(), nullable=True),
    sa.Column('candidate', sa.Float(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['stage_id'], ['validation_stages.id'], name=op.f('fk_validation_metrics_stage_id_validation_stages')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_validation_metrics'))
    )
    with op.batch_alter_table('validation_metrics', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_validation_metrics_stage_id'), ['stage_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('validation_metrics', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_validation_metrics_stage_id'))

    op.drop_table('validation_metrics')
    with op.batch_alter_table('release_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_release_events_release_id'))

    op.drop_table('release_events')
    with op.batch_alter_table('validation_stages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_validation_stages_quantization_run_id'))

    op.drop_table('validation_stages')
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_releases_model'))

    op.drop_table('releases')
    op.drop_table('quantization_runs')
    op.drop_table('calibration_sets')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoints_name'))

    op.drop_table('checkpoints')
