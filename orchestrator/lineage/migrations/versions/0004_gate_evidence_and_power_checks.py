"""each gate's confidence interval and verdict (validation_metrics.low, high, verdict), and the
power check's planted damages with the stages that caught them (power_check_outcomes)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("validation_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("low", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("high", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("verdict", sa.String(length=16), nullable=False, server_default="fail"))
    metrics = sa.table("validation_metrics", sa.column("passed", sa.Boolean), sa.column("verdict", sa.String))
    # Gates before 0004 decided on their point estimate alone: their verdict is their result.
    op.execute(metrics.update().where(metrics.c.passed == sa.true()).values(verdict="pass"))
    op.create_table(
        "power_check_outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("quantization_run_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("damage", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("meant_for", sa.String(length=32), nullable=True),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["quantization_run_id"],
            ["quantization_runs.id"],
            name=op.f("fk_power_check_outcomes_quantization_run_id_quantization_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_power_check_outcomes")),
    )
    with op.batch_alter_table("power_check_outcomes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_power_check_outcomes_quantization_run_id"), ["quantization_run_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("power_check_outcomes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_power_check_outcomes_quantization_run_id"))
    op.drop_table("power_check_outcomes")
    with op.batch_alter_table("validation_metrics", schema=None) as batch_op:
        batch_op.drop_column("verdict")
        batch_op.drop_column("high")
        batch_op.drop_column("low")
