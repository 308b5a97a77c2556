"""which way each gate's threshold limits its estimate (validation_metrics.higher_is_better: true for
a floor such as output tokens/s, false for a ceiling such as a perplexity increase)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("validation_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("higher_is_better", sa.Boolean(), nullable=False, server_default=sa.false()))
    metrics = sa.table("validation_metrics", sa.column("metric", sa.String), sa.column("higher_is_better", sa.Boolean))
    # Before 0006 the only floor was the load stage's throughput (validation.load_test.SLA_ROWS).
    op.execute(metrics.update().where(metrics.c.metric.like("%output tokens/s")).values(higher_is_better=True))


def downgrade() -> None:
    with op.batch_alter_table("validation_metrics", schema=None) as batch_op:
        batch_op.drop_column("higher_is_better")
