"""each quantization run's input address (quantization_runs.address: checkpoint content, calibration
tokens, settings, compute, quantizer code) and, where a finished model was reused rather than made
again, the run that made it (quantization_runs.reused_from_id)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("quantization_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("reused_from_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_quantization_runs_address"), ["address"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_quantization_runs_reused_from_id_quantization_runs"),
            "quantization_runs",
            ["reused_from_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("quantization_runs", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_quantization_runs_reused_from_id_quantization_runs"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_quantization_runs_address"))
        batch_op.drop_column("reused_from_id")
        batch_op.drop_column("address")
