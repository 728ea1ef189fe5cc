"""The results store: run records in SQLite (default) or PostgreSQL, through the SQLAlchemy ORM."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from sqlalchemy import ColumnElement, Engine, Select, cast, create_engine, event, exists, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from effbench.metrics.record import Metric, RunRecord, Status
from effbench.store.schema import Base, MetricRow, RunRow
from effbench.store.validate import RecordError, record_from_dict

_DEFAULT_URL = "sqlite:///results/effbench.db"
# Key of the PostgreSQL advisory lock that serialises table creation.
_CREATE_LOCK = 0x0EFFBE7C
# Execution option that makes a SQLite transaction take the write lock at BEGIN.
_WRITE = "effbench_write"
# One row per run x metric; the column set of metrics_frame and of csv/parquet exports.
_RUN_COLUMNS = ("id", "created_at", "status", "scenario", "model", "technique", "sweep_id")
_METRIC_COLUMNS = (
    "name", "value", "unit", "source", "higher_is_better",
    "median", "mean", "p90", "p99", "std", "ci95_low", "ci95_high", "n",
)  # fmt: skip
_FRAME_DTYPES = {
    **{c: "float64" for c in ("value", "median", "mean", "p90", "p99", "std", "ci95_low", "ci95_high")},
    "n": "int64",
    "higher_is_better": "boolean",
}
_EXPORT_FORMATS = ("json", "csv", "parquet")


def default_url() -> str:
    """`$EFFBENCH_DB_URL`, else a SQLite file under ./results."""
    return os.environ.get("EFFBENCH_DB_URL") or _DEFAULT_URL


def _sqlite_engine(url: URL, read_only: bool) -> Engine:
    if url.database and url.database != ":memory:":
        path = Path(url.database)
        if read_only:
            if not path.is_file():
                raise FileNotFoundError(f"no results store at {path.resolve()}")
            # mode=ro makes SQLite itself refuse writes, whatever the caller does.
            url = url.set(database=f"file:{quote(str(path.resolve()))}", query={"mode": "ro", "uri": "true"})
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn, _record) -> None:
        # pysqlite's own implicit BEGIN is deferred and skips DDL; we emit
        # BEGIN ourselves (below) so every transaction, DDL included, is real.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Parallel sweep jobs write one file: wait for the lock, don't fail.
        cur.execute("PRAGMA busy_timeout = 30000")
        cur.execute("PRAGMA foreign_keys = ON")  # off by default; needed for ON DELETE CASCADE
        if not read_only:
            # Readers then never block the writer, nor the writer the readers.
            cur.execute("PRAGMA journal_mode = WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        # A deferred transaction that reads first and then writes can get
        # SQLITE_BUSY at once, past busy_timeout; IMMEDIATE queues for the lock up front.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def _postgres_engine(url: URL, read_only: bool) -> Engine:
    if read_only:
        options = " ".join(filter(None, [url.query.get("options"), "-c default_transaction_read_only=on"]))
        url = url.update_query_dict({"options": options})
    return create_engine(url)


def _to_row(record: RunRecord) -> RunRow:
    return RunRow(
        id=record.id,
        created_at=record.created_at,
        status=record.status.value,
        error=record.error,
        axis=record.axis,
        scenario=record.scenario,
        model=record.model,
        technique=record.technique,
        config=record.config,
        config_hash=record.config_hash,
        hardware=record.hardware,
        software=record.software,
        seed=record.seed,
        tags=record.tags,
        sweep_id=record.sweep_id,
        duration_s=record.duration_s,
        artifact=record.artifact,
        metrics=[_to_metric_row(m) for m in record.metrics],
    )


def _to_metric_row(m: Metric) -> MetricRow:
    summary = asdict(m.summary)
    del summary["p50"]  # same as median
    return MetricRow(
        name=m.name,
        value=m.value,
        unit=m.unit,
        source=m.source.value,
        higher_is_better=m.higher_is_better,
        note=m.note,
        samples=m.samples,
        **summary,
    )


def _from_row(row: RunRow) -> RunRecord:
    return RunRecord(
        id=row.id,
        created_at=row.created_at,
        status=Status(row.status),
        axis=row.axis,
        scenario=row.scenario,
        model=row.model,
        technique=row.technique,
        config=row.config,
        config_hash=row.config_hash,
        hardware=row.hardware,
        software=row.software,
        seed=row.seed,
        metrics=[
            Metric(
                name=m.name,
                value=m.value,
                unit=m.unit,
                source=m.source,
                samples=m.samples,
                higher_is_better=m.higher_is_better,
                note=m.note,
            )
            for m in row.metrics
        ],
        error=row.error,
        tags=row.tags,
        sweep_id=row.sweep_id,
        duration_s=row.duration_s,
        artifact=row.artifact,
    )


def _newest_first(q: Select) -> Select:
    return q.order_by(RunRow.created_at.desc(), RunRow.id.desc())


class ResultStore:
    """Run records in one database: `sqlite:///path` (default) or `postgresql+psycopg://...`.

    A run and its metrics are written in one transaction: whole or not at all
    (SPEC §4). A read-only store is enforced by the database, not just here.
    """

    def __new__(cls, url: str | None = None, read_only: bool = False):
        # A `json://DIR` URL is a directory of per-run JSON files (effbench.store.jsondir):
        # the same calls work on it, so sweep jobs need not know which they write to.
        from effbench.store.jsondir import JsonDirStore, is_json_dir_url

        if cls is ResultStore and is_json_dir_url(url or default_url()):
            return JsonDirStore(url or default_url(), read_only=read_only)
        return super().__new__(cls)

    def __init__(self, url: str | None = None, read_only: bool = False) -> None:
        self.url = make_url(url or default_url())
        self.read_only = read_only
        backend = self.url.get_backend_name()
        if backend == "sqlite":
            self.engine = _sqlite_engine(self.url, read_only)
        elif backend == "postgresql":
            self.engine = _postgres_engine(self.url, read_only)
        else:
            raise ValueError(f"unsupported results database {backend!r}: use sqlite or postgresql")
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        if not read_only:
            self._create_tables()

    def __repr__(self) -> str:
        return f"ResultStore({self.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def _create_tables(self) -> None:
        # Jobs of a parallel sweep may all open a fresh database at once; one
        # transaction per creator (IMMEDIATE on SQLite, an advisory lock on
        # PostgreSQL) lets the first create and the rest see the tables.
        with self._write_engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK})
            Base.metadata.create_all(conn)

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        if self.read_only:
            raise PermissionError(f"{self} is read-only")
        with Session(self._write_engine) as session, session.begin():
            yield session

    def write(self, record: RunRecord) -> None:
        """Store one run with all its metrics, atomically. Raises RecordError if
        the record is malformed (e.g. a NaN value) or its id is already stored."""
        try:
            # asdict, not to_dict: to_dict computes summaries, which must wait
            # until the samples are known to be finite.
            row = _to_row(record_from_dict(asdict(record)))
        except RecordError as e:
            raise RecordError(f"run {record.id!r}: {e}") from None
        try:
            with self._writing() as session:
                session.add(row)
        except IntegrityError as e:
            with Session(self.engine) as session:
                if session.get(RunRow, record.id) is not None:
                    raise RecordError(f"run {record.id!r} is already stored in {self}") from e
            raise

    def get(self, run_id: str) -> RunRecord:
        """The run with this id, or with this unique id prefix."""
        if not run_id:
            raise KeyError("no run id given")
        with Session(self.engine) as session:
            row = session.get(RunRow, run_id)
            if row is None:
                q = select(RunRow.id).where(RunRow.id.startswith(run_id, autoescape=True))
                ids = session.scalars(q.order_by(RunRow.id).limit(6)).all()
                if not ids:
                    raise KeyError(f"no run with id or id prefix {run_id!r} in {self}")
                if len(ids) > 1:
                    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
                    raise KeyError(f"run id prefix {run_id!r} is ambiguous ({shown}): give more characters")
                row = session.get(RunRow, ids[0])
            return _from_row(row)

    def _has_tag(self, tag: str) -> ColumnElement[bool]:
        if self.engine.dialect.name == "postgresql":
            return cast(RunRow.tags, JSONB).contains([tag])
        values = func.json_each(RunRow.tags).table_valued("value")
        return exists().select_from(values).where(values.c.value == tag)

    def runs(
        self,
        *,
        status: Status | str | None = None,
        scenario: str | None = None,
        model: str | None = None,
        technique: str | None = None,
        sweep_id: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Stored runs matching every given filter, newest first."""
        q = _newest_first(select(RunRow).options(selectinload(RunRow.metrics)))
        equal = {
            RunRow.status: None if status is None else Status(status).value,
            RunRow.scenario: scenario,
            RunRow.model: model,
            RunRow.technique: technique,
            RunRow.sweep_id: sweep_id,
        }
        q = q.where(*(column == value for column, value in equal.items() if value is not None))
        if tag is not None:
            q = q.where(self._has_tag(tag))
        with Session(self.engine) as session:
            return [_from_row(row) for row in session.scalars(q.limit(limit))]

    def find_completed(self, config_hash: str) -> str | None:
        """Id of the newest `ok` run of this config hash, so a re-run sweep can skip it."""
        q = select(RunRow.id).where(RunRow.config_hash == config_hash, RunRow.status == Status.OK.value)
        with Session(self.engine) as session:
            return session.scalar(_newest_first(q).limit(1))

    def metrics_frame(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per run x metric: run columns (id, created_at as UTC timestamps,
        status, scenario, model, technique, sweep_id), then the metric's columns."""
        q = select(
            *(getattr(RunRow, c) for c in _RUN_COLUMNS),
            *(getattr(MetricRow, c) for c in _METRIC_COLUMNS),
        ).join(RunRow.metrics)
        if run_ids is not None:
            q = q.where(RunRow.id.in_(list(run_ids)))
        with Session(self.engine) as session:
            rows = session.execute(_newest_first(q).order_by(MetricRow.id)).all()
        frame = pd.DataFrame(rows, columns=[*_RUN_COLUMNS, *_METRIC_COLUMNS]).astype(_FRAME_DTYPES)
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
        return frame

    def export(self, path: str | os.PathLike[str], fmt: str | None = None) -> int:
        """Write every run to `path`: json (full records, importable) or csv/parquet
        (the metrics frame). `fmt` defaults to the file suffix. Returns records or rows written."""
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt not in _EXPORT_FORMATS:
            raise ValueError(f"export format must be one of {', '.join(_EXPORT_FORMATS)}, got {fmt!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            records = [r.to_dict() for r in self.runs()]
            path.write_text(json.dumps(records, indent=2, allow_nan=False) + "\n")
            return len(records)
        frame = self.metrics_frame()
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return len(frame)

    def import_json(self, path: str | os.PathLike[str]) -> tuple[int, int]:
        """Add the runs of a json export (or of a directory of per-job JSON records);
        returns (added, already present by id).

        Every record is validated before anything is written, and all new ones
        go in one transaction, so a bad file leaves the store as it was.
        """
        if Path(path).is_dir():  # per-job records of a sweep (store.url=json://DIR)
            from effbench.store.jsondir import import_json_dir

            return import_json_dir(self, path)
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected a JSON list of run records, got {type(data).__name__}")
        records: dict[str, RunRecord] = {}
        index: dict[str, int] = {}
        for i, d in enumerate(data):
            try:
                record = record_from_dict(d)
            except RecordError as e:
                raise RecordError(f"record {i}: {e}") from None
            if record.id in records:
                raise RecordError(f"record {i}: field 'id' repeats {record.id!r} of record {index[record.id]}")
            records[record.id] = record
            index[record.id] = i
        ids = list(records)
        with self._writing() as session:
            # Chunked: SQLite and PostgreSQL cap the bound parameters of one statement.
            present = {
                run_id
                for k in range(0, len(ids), 1000)
                for run_id in session.scalars(select(RunRow.id).where(RunRow.id.in_(ids[k : k + 1000])))
            }
            session.add_all(_to_row(r) for run_id, r in records.items() if run_id not in present)
        return len(records) - len(present), len(present)
