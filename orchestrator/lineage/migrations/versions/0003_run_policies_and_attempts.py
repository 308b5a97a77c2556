"""one release policy per run (run_policies, and the policy each quantization run used), and every
attempt at a release with how it ended (release_attempts)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_policies")),
        sa.UniqueConstraint("run_id", name=op.f("uq_run_policies_run_id")),
    )
    with op.batch_alter_table("run_policies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_policies_hash"), ["hash"], unique=False)
    op.create_table(
        "release_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("checkpoint", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_attempts")),
        sa.UniqueConstraint("run_id", name=op.f("uq_release_attempts_run_id")),
    )
    with op.batch_alter_table("release_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_release_attempts_checkpoint"), ["checkpoint"], unique=False)
        batch_op.create_index(batch_op.f("ix_release_attempts_source"), ["source"], unique=False)
    with op.batch_alter_table("quantization_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_quantization_runs_policy_id_run_policies"), "run_policies", ["policy_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("quantization_runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_quantization_runs_policy_id_run_policies"), type_="foreignkey")
        batch_op.drop_column("policy_id")
    with op.batch_alter_table("release_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_attempts_source"))
        batch_op.drop_index(batch_op.f("ix_release_attempts_checkpoint"))
    op.drop_table("release_attempts")
    with op.batch_alter_table("run_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_policies_hash"))
    op.drop_table("run_policies")
