"""figures each stage measured of one model, kept by address (measurements), the roles a stage
found there (validation_stages.reused), and power check outcomes by address, a reused one pointing
at the outcome that was measured (power_check_outcomes.address, reused_from_id)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("model_hash", sa.String(length=64), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_measurements")),
        sa.UniqueConstraint("address", name=op.f("uq_measurements_address")),
    )
    op.create_index(op.f("ix_measurements_model_hash"), "measurements", ["model_hash"], unique=False)
    with op.batch_alter_table("validation_stages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reused", sa.JSON(), nullable=True))
    with op.batch_alter_table("power_check_outcomes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reused_from_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_power_check_outcomes_address"), ["address"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_power_check_outcomes_reused_from_id_power_check_outcomes"),
            "power_check_outcomes",
            ["reused_from_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("power_check_outcomes", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_power_check_outcomes_reused_from_id_power_check_outcomes"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_power_check_outcomes_address"))
        batch_op.drop_column("reused_from_id")
        batch_op.drop_column("address")
    with op.batch_alter_table("validation_stages", schema=None) as batch_op:
        batch_op.drop_column("reused")
    op.drop_index(op.f("ix_measurements_model_hash"), table_name="measurements")
    op.drop_table("measurements")
