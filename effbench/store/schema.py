"""ORM tables of the results store: one `runs` row per RunRecord, one `metrics` row per Metric.

Summary statistics are copied into plain columns so SQL can filter and rank
without parsing the samples JSON. Generic `JSON` keeps one schema for SQLite
and PostgreSQL. A change here is a new migration in effbench/store/migrations/versions
(`alembic revision --autogenerate` from that folder's env) and a new SCHEMA_VERSION.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Double,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from effbench.metrics.record import Source, Status


def _one_of(column: str, enum: type[Status] | type[Source]) -> str:
    return f"{column} IN ({', '.join(repr(e.value) for e in enum)})"


# The Alembic revision this code reads and writes (the newest in migrations/versions).
SCHEMA_VERSION = "0003"


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_one_of("status", Status), name="ck_runs_status"),)

    id: Mapped[str] = mapped_column(String, primary_key=True)
    # Kept verbatim (ISO-8601, UTC) so records round-trip exactly; such
    # strings sort chronologically as text, which is all "newest first" needs.
    created_at: Mapped[str] = mapped_column(String, index=True)
    status: Mapped[str] = mapped_column(String)
    error: Mapped[str | None] = mapped_column(Text)
    axis: Mapped[str] = mapped_column(String)
    scenario: Mapped[str] = mapped_column(String, index=True)
    model: Mapped[str] = mapped_column(String, index=True)
    technique: Mapped[str] = mapped_column(String, index=True)
    config: Mapped[dict] = mapped_column(JSON)
    config_hash: Mapped[str] = mapped_column(String, index=True)
    hardware: Mapped[dict] = mapped_column(JSON)
    software: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    tags: Mapped[list] = mapped_column(JSON)
    sweep_id: Mapped[str | None] = mapped_column(String, index=True)
    duration_s: Mapped[float | None] = mapped_column(Double)
    artifact: Mapped[dict | None] = mapped_column(JSON)
    warnings: Mapped[list] = mapped_column(JSON)
    provenance: Mapped[dict] = mapped_column(JSON)

    metrics: Mapped[list[MetricRow]] = relationship(
        back_populates="run",
        order_by="MetricRow.id",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class MetricRow(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("run_id", "name", name="uq_metrics_run_name"),
        CheckConstraint(_one_of("source", Source), name="ck_metrics_source"),
    )

    # Autoincrement order is insertion order: it keeps a run's metrics in the
    # order the record listed them.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # No index of its own: the unique (run_id, name) index serves lookups by run.
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String, index=True)
    value: Mapped[float] = mapped_column(Double)
    unit: Mapped[str] = mapped_column(String)
    source: Mapped[str] = mapped_column(String)
    higher_is_better: Mapped[bool | None] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text)
    samples: Mapped[list] = mapped_column(JSON)
    n: Mapped[int] = mapped_column(Integer)
    median: Mapped[float] = mapped_column(Double)
    mean: Mapped[float] = mapped_column(Double)
    p90: Mapped[float] = mapped_column(Double)
    p99: Mapped[float] = mapped_column(Double)
    std: Mapped[float] = mapped_column(Double)
    ci95_low: Mapped[float] = mapped_column(Double)  # the mean's interval
    ci95_high: Mapped[float] = mapped_column(Double)
    median_ci95_low: Mapped[float | None] = mapped_column(Double)  # the median's; null: too few samples
    median_ci95_high: Mapped[float | None] = mapped_column(Double)
    few_samples: Mapped[bool] = mapped_column(Boolean)
    invalid: Mapped[str | None] = mapped_column(Text)  # why the figure is impossible; null: a valid figure

    run: Mapped[RunRow] = relationship(back_populates="metrics")
