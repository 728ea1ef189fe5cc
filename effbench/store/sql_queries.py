"""The leaderboard's reads of a SQL store (effbench.store.base.StoreQueries):
every filter value a bound parameter, the heavy lifting (newest run per key,
counts, pages) in SQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING

import pandas as pd
from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from effbench.store.base import METRIC_COLUMNS, RUN_COLUMNS, Filters
from effbench.store.schema import MetricRow, RunRow

if TYPE_CHECKING:
    from effbench.store.sql import SqlStore

# Bound parameters per IN list: SQLite and PostgreSQL cap them per statement.
_CHUNK = 900
HARDWARE = RunRow.hardware["label"].as_string()
_RUN = dict(zip(RUN_COLUMNS, (RunRow.id, RunRow.created_at, RunRow.status, RunRow.axis, RunRow.scenario,
                              RunRow.model, RunRow.technique, HARDWARE)))


class SqlQueries:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.empty = not store._ready_for_reading()

    def _conditions(self, f: Filters) -> list[ColumnElement[bool]]:
        equal = {RunRow.axis: f.axis, RunRow.scenario: f.scenario, RunRow.model: f.model,
                 RunRow.technique: f.technique, HARDWARE: f.hardware, RunRow.status: f.status}
        where = [column.in_(values) for column, values in equal.items() if values]
        if f.tag:
            where.append(or_(*(self.store.has_tag(t) for t in f.tag)))
        if f.since:
            where.append(RunRow.created_at >= f.since.isoformat())
        if f.until:
            where.append(RunRow.created_at < (f.until + timedelta(days=1)).isoformat())
        if f.search:
            where.append(or_(RunRow.model.contains(f.search, autoescape=True),
                             RunRow.technique.contains(f.search, autoescape=True),
                             RunRow.id.startswith(f.search, autoescape=True)))
        return where

    def _frame(self, q: Select, columns: Sequence[str]) -> pd.DataFrame:
        if self.empty:
            return pd.DataFrame(columns=list(columns))
        with Session(self.store.engine) as session:
            return pd.DataFrame(session.execute(q).all(), columns=list(columns))

    def version(self) -> tuple[int, str | None]:
        if self.empty:
            return 0, None
        with Session(self.store.engine) as session:
            return tuple(session.execute(select(func.count(), func.max(RunRow.created_at)).select_from(RunRow)).one())

    def count_runs(self, f: Filters = Filters()) -> int:
        if self.empty:
            return 0
        with Session(self.store.engine) as session:
            return session.scalar(select(func.count()).select_from(RunRow).where(*self._conditions(f)))

    def facets(self) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("axis", "scenario", "model", "technique", "hardware", "status", "tag",
                                                "metric", "dates")}
        if self.empty:
            return out
        with Session(self.store.engine) as session:
            for key in ("axis", "scenario", "model", "technique", "hardware", "status"):
                column = _RUN[key]
                out[key] = [v for v in session.scalars(select(column).distinct().order_by(column)) if v is not None]
            if self.store.engine.dialect.name == "postgresql":
                tags = select(func.json_array_elements_text(RunRow.tags).label("t")).subquery()
                out["tag"] = list(session.scalars(select(tags.c.t).distinct().order_by(tags.c.t)))
            else:
                values = func.json_each(RunRow.tags).table_valued("value", joins_implicitly=True)
                out["tag"] = list(session.scalars(select(values.c.value).select_from(RunRow, values).distinct()
                                                  .order_by(values.c.value)))
            out["metric"] = list(session.scalars(select(MetricRow.name).distinct().order_by(MetricRow.name)))
            first, last = session.execute(select(func.min(RunRow.created_at), func.max(RunRow.created_at))).one()
        out["dates"] = [date.fromisoformat(d[:10]) for d in (first, last) if d]
        return out

    def run_page(self, f: Filters, sort: str | None = None, descending: bool = True, offset: int = 0,
                 limit: int = 100) -> pd.DataFrame:
        key = RunRow.created_at if sort is None else (
            select(MetricRow.value).where(MetricRow.run_id == RunRow.id, MetricRow.name == sort).scalar_subquery())
        order = key.desc() if descending else key.asc()
        q = (select(*_RUN.values(), RunRow.tags, RunRow.error).where(*self._conditions(f))
             .order_by(order.nulls_last(), RunRow.id.desc()).offset(offset).limit(limit))
        return self._frame(q, [*RUN_COLUMNS, "tags", "error"])

    def metric_rows(self, run_ids: Sequence[str], names: Iterable[str] = (), like: str | None = None,
                    samples: bool = False) -> pd.DataFrame:
        columns = ["run_id", *METRIC_COLUMNS, *(["samples"] if samples else [])]
        names = list(names)
        match = [*([MetricRow.name.in_(names)] if names else []), *([MetricRow.name.like(like)] if like else [])]
        frames = [
            self._frame(select(*(getattr(MetricRow, c) for c in columns))
                        .where(MetricRow.run_id.in_(list(run_ids[k : k + _CHUNK])), *([or_(*match)] if match else [])),
                        columns)
            for k in range(0, len(run_ids), _CHUNK)
        ]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def latest_ok_runs(self, f: Filters = Filters()) -> pd.DataFrame:
        """SQL keeps the newest run per config hash and hardware, which parses only the small
        hardware JSON of every run; the caller compares the configs of those few."""
        newest = func.row_number().over(
            partition_by=(RunRow.axis, RunRow.scenario, RunRow.model, RunRow.technique, RunRow.config_hash, HARDWARE),
            order_by=(RunRow.created_at.desc(), RunRow.id.desc()),
        )
        ranked = (select(RunRow.id, newest.label("newest")).where(RunRow.status == "ok", *self._conditions(f))
                  .subquery())
        parameters = (select(MetricRow.value).where(MetricRow.run_id == RunRow.id,
                                                    MetricRow.name == "model.parameters").scalar_subquery())
        q = (select(*_RUN.values(), RunRow.config, parameters).join(ranked, ranked.c.id == RunRow.id)
             .where(ranked.c.newest == 1))
        return self._frame(q, [*RUN_COLUMNS, "config", "parameters"])
