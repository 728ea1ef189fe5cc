"""The leaderboard's reads of the results store: read-only, every filter value a
bound parameter, the heavy lifting (newest run per key, counts, pages) in SQL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd
from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from effbench.store import ResultStore
from effbench.store.schema import MetricRow, RunRow

FIRST_SWEEP = "make demo   # or: effbench run --multirun sweep=quick"
# Bound parameters per IN list: SQLite and PostgreSQL cap them per statement.
_CHUNK = 900
HARDWARE = RunRow.hardware["label"].as_string()
RUN_COLUMNS = {
    "id": RunRow.id, "created_at": RunRow.created_at, "status": RunRow.status, "axis": RunRow.axis,
    "scenario": RunRow.scenario, "model": RunRow.model, "technique": RunRow.technique, "hardware": HARDWARE,
}  # fmt: skip
METRIC_COLUMNS = ("name", "value", "unit", "source", "higher_is_better", "mean", "ci95_low", "ci95_high", "n")


class StoreUnavailable(Exception):
    """The store cannot be read: the message says why and what to do."""


@dataclass(frozen=True)
class Filters:
    """Explorer filters; empty means no restriction. Hashable, so it keys caches."""

    axis: tuple[str, ...] = ()
    scenario: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    technique: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()  # runs carrying any of these
    since: date | None = None
    until: date | None = None  # inclusive
    search: str = ""  # substring of model or technique, or a run id prefix


def open_store(url: str) -> ResultStore:
    """A read-only store whose tables answer, or StoreUnavailable with the reason."""
    try:
        store = ResultStore(url, read_only=True)
    except FileNotFoundError as e:
        raise StoreUnavailable(f"{e}. Run a first sweep to create it:\n\n    {FIRST_SWEEP}") from None
    except (ArgumentError, ValueError) as e:
        raise StoreUnavailable(f"{url!r} is not a results-store URL: {e}") from None
    try:
        with Session(store.engine) as session:
            session.scalar(select(func.count()).select_from(RunRow))
    except SQLAlchemyError as e:
        store.close()
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise StoreUnavailable(f"{store} cannot be read as an effbench results store: {reason}") from None
    return store


def _conditions(store: ResultStore, f: Filters) -> list[ColumnElement[bool]]:
    equal = {RunRow.axis: f.axis, RunRow.scenario: f.scenario, RunRow.model: f.model, RunRow.technique: f.technique,
             HARDWARE: f.hardware, RunRow.status: f.status}
    where = [column.in_(values) for column, values in equal.items() if values]
    if f.tag:
        where.append(or_(*(store._has_tag(t) for t in f.tag)))
    if f.since:
        where.append(RunRow.created_at >= f.since.isoformat())
    if f.until:
        where.append(RunRow.created_at < (f.until + timedelta(days=1)).isoformat())
    if f.search:
        where.append(or_(RunRow.model.contains(f.search, autoescape=True),
                         RunRow.technique.contains(f.search, autoescape=True),
                         RunRow.id.startswith(f.search, autoescape=True)))
    return where


def _frame(store: ResultStore, q: Select, columns: Sequence[str]) -> pd.DataFrame:
    with Session(store.engine) as session:
        return pd.DataFrame(session.execute(q).all(), columns=list(columns))


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    return (list(ids[k : k + _CHUNK]) for k in range(0, len(ids), _CHUNK))


def version(store: ResultStore) -> tuple[int, str | None]:
    """How many runs the store holds and when the newest was made: changes with every new run."""
    with Session(store.engine) as session:
        return tuple(session.execute(select(func.count(), func.max(RunRow.created_at)).select_from(RunRow)).one())


def count_runs(store: ResultStore, f: Filters = Filters()) -> int:
    with Session(store.engine) as session:
        return session.scalar(select(func.count()).select_from(RunRow).where(*_conditions(store, f)))


def facets(store: ResultStore) -> dict[str, list]:
    """Distinct values of each filterable field, the metric names, and the first and last run date."""
    out = {}
    with Session(store.engine) as session:
        for key, column in (("axis", RunRow.axis), ("scenario", RunRow.scenario), ("model", RunRow.model),
                            ("technique", RunRow.technique), ("hardware", HARDWARE), ("status", RunRow.status)):
            out[key] = [v for v in session.scalars(select(column).distinct().order_by(column)) if v is not None]
        if store.engine.dialect.name == "postgresql":
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


def _metric_value(name: str) -> ColumnElement:
    return (select(MetricRow.value).where(MetricRow.run_id == RunRow.id, MetricRow.name == name)
            .scalar_subquery())


def run_page(store: ResultStore, f: Filters, sort: str | None = None, descending: bool = True,
             offset: int = 0, limit: int = 100) -> pd.DataFrame:
    """One page of matching runs (run columns, tags, error); sorted by a metric's value
    (missing last) or, when `sort` is None, by time."""
    key = RunRow.created_at if sort is None else _metric_value(sort)
    order = key.desc() if descending else key.asc()
    q = (select(*RUN_COLUMNS.values(), RunRow.tags, RunRow.error).where(*_conditions(store, f))
         .order_by(order.nulls_last(), RunRow.id.desc()).offset(offset).limit(limit))
    return _frame(store, q, [*RUN_COLUMNS, "tags", "error"])


def metric_rows(store: ResultStore, run_ids: Sequence[str], names: Iterable[str] = (), like: str | None = None,
                samples: bool = False) -> pd.DataFrame:
    """Metric rows (METRIC_COLUMNS, and samples if asked) of these runs whose name is
    in `names` or matches the LIKE pattern; all metrics if neither is given."""
    columns = ["run_id", *METRIC_COLUMNS, *(["samples"] if samples else [])]
    names = list(names)
    match = [*([MetricRow.name.in_(names)] if names else []), *([MetricRow.name.like(like)] if like else [])]
    frames = [
        _frame(store, select(*(getattr(MetricRow, c) for c in columns))
               .where(MetricRow.run_id.in_(chunk), *([or_(*match)] if match else [])), columns)
        for chunk in _chunks(run_ids)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def newest_metric_rows(store: ResultStore, f: Filters, names: Iterable[str], cap: int) -> pd.DataFrame:
    """Run columns + metric rows of the newest `cap` ok runs that match, for the named metrics."""
    newest = (select(RunRow.id).where(*_conditions(store, f), RunRow.status == "ok")
              .order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(cap).subquery())
    q = (select(*RUN_COLUMNS.values(), *(getattr(MetricRow, c) for c in METRIC_COLUMNS))
         .join(MetricRow, MetricRow.run_id == RunRow.id)
         .where(RunRow.id.in_(select(newest.c.id)), MetricRow.name.in_(list(names))))
    return _frame(store, q, [*RUN_COLUMNS, *METRIC_COLUMNS])


def latest_ok_runs(store: ResultStore, f: Filters = Filters()) -> pd.DataFrame:
    """The newest ok run per (axis, scenario and data config, hardware, model, technique):
    the runs the overview ranks. Columns: RUN_COLUMNS, workload (JSON), parameters.

    SQL keeps the newest run per config hash and hardware, which parses only the small
    hardware JSON of every run; the configs of those few are then compared here."""
    newest = func.row_number().over(
        partition_by=(RunRow.axis, RunRow.scenario, RunRow.model, RunRow.technique, RunRow.config_hash, HARDWARE),
        order_by=(RunRow.created_at.desc(), RunRow.id.desc()),
    )
    ranked = (select(RunRow.id, newest.label("newest")).where(RunRow.status == "ok", *_conditions(store, f))
              .subquery())
    parameters = (select(MetricRow.value).where(MetricRow.run_id == RunRow.id, MetricRow.name == "model.parameters")
                  .scalar_subquery())
    q = (select(*RUN_COLUMNS.values(), RunRow.config, parameters).join(ranked, ranked.c.id == RunRow.id)
         .where(ranked.c.newest == 1))
    runs = _frame(store, q, [*RUN_COLUMNS, "config", "parameters"])
    runs["workload"] = [json.dumps({k: c.get(k) for k in ("scenario", "data")}, sort_keys=True)
                        for c in runs.pop("config")]
    runs["parameters"] = runs["parameters"].astype(float)
    return (runs.sort_values(["created_at", "id"], ascending=False)
            .drop_duplicates(["axis", "scenario", "workload", "hardware", "model", "technique"])
            .reset_index(drop=True))
