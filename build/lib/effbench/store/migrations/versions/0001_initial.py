"""The schema as effbench wrote it before it was versioned (runs and metrics).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("created_at", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("axis", sa.String(), nullable=False),
        sa.Column("scenario", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("technique", sa.String(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(), nullable=False),
        sa.Column("hardware", sa.JSON(), nullable=False),
        sa.Column("software", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("sweep_id", sa.String(), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("artifact", sa.JSON(), nullable=True),
        sa.CheckConstraint("status IN ('ok', 'failed', 'skipped')", name="ck_runs_status"),
    )
    for column in ("created_at", "scenario", "model", "technique", "config_hash", "sweep_id"):
        op.create_index(f"ix_runs_{column}", "runs", [column])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("unit", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("higher_is_better", sa.Boolean(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("samples", sa.JSON(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("median", sa.Double(), nullable=False),
        sa.Column("mean", sa.Double(), nullable=False),
        sa.Column("p90", sa.Double(), nullable=False),
        sa.Column("p99", sa.Double(), nullable=False),
        sa.Column("std", sa.Double(), nullable=False),
        sa.Column("ci95_low", sa.Double(), nullable=False),
        sa.Column("ci95_high", sa.Double(), nullable=False),
        sa.UniqueConstraint("run_id", "name", name="uq_metrics_run_name"),
        sa.CheckConstraint("source IN ('counter', 'sampled', 'timer', 'analytic', 'estimated')",
                           name="ck_metrics_source"),
    )
    op.create_index("ix_metrics_name", "metrics", ["name"])


def downgrade() -> None:
    op.drop_table("metrics")
    op.drop_table("runs")
