"""stage status (passed | failed | skipped) and where each stage ran

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("validation_stages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=16), nullable=False, server_default="failed"))
        batch_op.add_column(sa.Column("compute", sa.JSON(), nullable=True))
    stages = sa.table("validation_stages", sa.column("passed", sa.Boolean()), sa.column("status", sa.String()))
    op.execute(stages.update().where(stages.c.passed == sa.true()).values(status="passed"))


def downgrade() -> None:
    with op.batch_alter_table("validation_stages", schema=None) as batch_op:
        batch_op.drop_column("compute")
        batch_op.drop_column("status")
