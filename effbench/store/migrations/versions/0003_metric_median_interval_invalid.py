"""Metrics carry the median's own 95% interval (the headline figure is a median),
whether their samples are too few for it, and why a figure is impossible
(`invalid`: a utilization above 1, a negative energy …).

Existing rows get them computed from their stored samples by this effbench's
rules (effbench.metrics.record.Summary, the catalogue's domains).

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
    op.add_column("metrics", sa.Column("median_ci95_low", sa.Double(), nullable=True))
    op.add_column("metrics", sa.Column("median_ci95_high", sa.Double(), nullable=True))
    op.add_column("metrics", sa.Column("few_samples", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("metrics", sa.Column("invalid", sa.Text(), nullable=True))
    _fill()


def _fill() -> None:
    from effbench.metrics.record import Metric

    metrics = sa.table("metrics", sa.column("id"), sa.column("name"), sa.column("value"), sa.column("samples", sa.JSON),
                       sa.column("median_ci95_low"), sa.column("median_ci95_high"), sa.column("few_samples"),
                       sa.column("invalid"))
    conn = op.get_bind()
    rows = conn.execute(sa.select(metrics.c.id, metrics.c.name, metrics.c.value, metrics.c.samples)).all()
    for row_id, name, value, samples in rows:
        m = Metric(name, value, "", "analytic", samples)
        s = m.summary
        conn.execute(metrics.update().where(metrics.c.id == row_id).values(
            median_ci95_low=s.median_ci95_low, median_ci95_high=s.median_ci95_high, few_samples=s.few_samples,
            invalid=m.invalid))


def downgrade() -> None:
    raise NotImplementedError("effbench stores are upgraded, never downgraded: restore the backup taken before "
                              "`effbench migrate`")
