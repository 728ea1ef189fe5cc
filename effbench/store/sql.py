"""The SQL results store: run records in SQLite (default) or PostgreSQL, through the
SQLAlchemy ORM, with a versioned schema (Alembic migrations in effbench/store/migrations).

The database is created on the first write (so bad input never leaves an empty
one behind). A store made by an older effbench is upgraded when opened for
writing; opened read-only it is refused with the command that upgrades it; one
made by a newer effbench is refused — never silently misread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import ColumnElement, Engine, Select, cast, create_engine, event, exists, func, inspect, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from effbench.metrics.record import Metric, RunRecord, Status
from effbench.store.base import StoreError, StoreMissing, StoreVersionError
from effbench.store.export import METRIC_FRAME_COLUMNS, RUN_FRAME_COLUMNS, export_format, typed_frame, write_export
from effbench.store.schema import SCHEMA_VERSION, MetricRow, RunRow
from effbench.store.validate import RecordError, record_from_dict

# Key of the PostgreSQL advisory lock that serialises schema creation and upgrades.
_CREATE_LOCK = 0x0EFFBE7C
# Execution option that makes a SQLite transaction take the write lock at BEGIN.
_WRITE = "effbench_write"
# The revision Alembic's version table holds for a store made before effbench versioned its schema.
_UNVERSIONED = "0001"


def _sqlite_path(url: URL) -> Path | None:
    return Path(url.database) if url.database and url.database != ":memory:" else None


def _sqlite_engine(url: URL, read_only: bool) -> Engine:
    path = _sqlite_path(url)
    if path is not None and read_only:
        # mode=ro makes SQLite itself refuse writes, whatever the caller does.
        url = url.set(database=f"file:{quote(str(path.resolve()))}", query={"mode": "ro", "uri": "true"})
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


@contextmanager
def _foreign_keys_off(conn) -> Iterator[None]:
    """SQLite: no ON DELETE CASCADE while a migration runs (a table it rebuilt would take its
    children with it). The pragma only acts outside a transaction, so it goes to the driver
    connection before BEGIN."""
    raw = conn.connection.driver_connection if conn.dialect.name == "sqlite" else None
    if raw is not None:
        raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        if raw is not None:
            raw.execute("PRAGMA foreign_keys = ON")


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
        warnings=record.warnings,
        provenance=record.provenance,
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
        invalid=m.invalid,
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
                invalid=m.invalid,
            )
            for m in row.metrics
        ],
        error=row.error,
        tags=row.tags,
        sweep_id=row.sweep_id,
        duration_s=row.duration_s,
        artifact=row.artifact,
        warnings=row.warnings,
        provenance=row.provenance,
    )


def _newest_first(q: Select) -> Select:
    return q.order_by(RunRow.created_at.desc(), RunRow.id.desc())


class SqlStore:
    """Run records in one database: `sqlite:///path` (default) or `postgresql+psycopg://...`.

    A run and its metrics are written in one transaction: whole or not at all
    (docs/spec.md §4). A read-only store is enforced by the database, not just here.
    """

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = url
        self._url = make_url(url)
        self.read_only = read_only
        backend = self._url.get_backend_name()
        self.engine = (_sqlite_engine if backend == "sqlite" else _postgres_engine)(self._url, read_only)
        self._write_engine = self.engine.execution_options(**{_WRITE: True})
        self._current = False  # the schema is known to exist at this effbench's version
        if read_only:
            self._check_readable()

    @staticmethod
    def check_url(url: str) -> None:
        """A URL SQLAlchemy can use with an installed driver; opens nothing."""
        try:
            parsed = make_url(url)
            parsed.get_dialect()
        except (ArgumentError, NoSuchModuleError, ValueError) as e:
            raise StoreError(f"store URL {url!r} cannot be used: {e}") from None
        path = _sqlite_path(parsed) if parsed.get_backend_name() == "sqlite" else None
        if path is not None and path.exists() and not path.is_file():
            raise StoreError(f"store URL {url!r}: {path} is a directory, not a SQLite file")

    def __repr__(self) -> str:
        return f"SqlStore({self._url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    # --- schema ----------------------------------------------------------------------------------------------

    def _file_missing(self) -> bool:
        path = _sqlite_path(self._url) if self._url.get_backend_name() == "sqlite" else None
        return path is not None and not path.is_file()

    def schema_revision(self) -> str | None:
        """The schema revision the database holds: None when it has no effbench tables,
        `_UNVERSIONED` for a store made before effbench versioned its schema."""
        if self._file_missing():
            return None
        with self.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if "runs" not in tables:
                return None
            if "alembic_version" not in tables:
                return _UNVERSIONED
            return conn.scalar(text("SELECT version_num FROM alembic_version"))

    def _describe(self) -> str:
        path = _sqlite_path(self._url) if self._url.get_backend_name() == "sqlite" else None
        return str(path.resolve()) if path is not None else self._url.render_as_string(hide_password=True)

    def _check_readable(self) -> None:
        where = self._describe()
        if self._file_missing():
            raise StoreMissing(f"no results store at {where} yet: `effbench run` (or `make demo`) creates it "
                               "with its first run")
        try:
            revision = self.schema_revision()
        except SQLAlchemyError as e:
            reason = str(getattr(e, "orig", None) or e).splitlines()[0]
            raise StoreError(f"{where} cannot be read as an effbench results store: {reason}") from None
        if revision is None:
            raise StoreError(f"{where} is not an effbench results store (it has no `runs` table)")
        self._check_revision(revision, upgrade_hint=True)
        self._current = True

    def _check_revision(self, revision: str, upgrade_hint: bool) -> None:
        from effbench.store.migrations import is_known

        if revision == SCHEMA_VERSION:
            return
        if not is_known(revision):
            raise StoreVersionError(f"{self._describe()} was written by a newer effbench (schema {revision}; this "
                                    f"effbench knows up to {SCHEMA_VERSION}): upgrade effbench to read it")
        if upgrade_hint:
            raise StoreVersionError(f"{self._describe()} was written by an older effbench (schema {revision}, "
                                    f"this effbench uses {SCHEMA_VERSION}): upgrade it with "
                                    f"`effbench migrate --db {self._url.render_as_string(hide_password=True)}` "
                                    "(back it up first), then read it again")

    def migrate(self) -> tuple[str | None, str]:
        """Create or upgrade the schema to this effbench's version; (revision before, after)."""
        if self.read_only:
            raise PermissionError(f"{self} is read-only")
        from effbench.store.migrations import upgrade

        path = _sqlite_path(self._url) if self._url.get_backend_name() == "sqlite" else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Jobs of a parallel sweep may all open a fresh database at once; one transaction
        # per creator (IMMEDIATE on SQLite, an advisory lock on PostgreSQL) lets the first
        # create it and the rest see it done.
        with self._write_engine.connect() as conn, _foreign_keys_off(conn), conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK})
            tables = set(inspect(conn).get_table_names())
            before = None if "runs" not in tables else (
                conn.scalar(text("SELECT version_num FROM alembic_version")) if "alembic_version" in tables
                else _UNVERSIONED)
            if before is not None:
                self._check_revision(before, upgrade_hint=False)
            if before != SCHEMA_VERSION:
                upgrade(conn, stamp=_UNVERSIONED if before == _UNVERSIONED else None)
        self._current = True
        return before, SCHEMA_VERSION

    def _ready_for_reading(self) -> bool:
        """False when nothing is stored yet (reads then find nothing); an older store
        opened for writing is upgraded first."""
        if self._current:
            return True
        revision = self.schema_revision()
        if revision is None:
            return False
        if revision != SCHEMA_VERSION:
            self.migrate()
        self._current = True
        return True

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        if self.read_only:
            raise PermissionError(f"{self} is read-only")
        if not self._current:
            self.migrate()
        with Session(self._write_engine) as session, session.begin():
            yield session

    # --- records ---------------------------------------------------------------------------------------------

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
        if not self._ready_for_reading():
            raise KeyError(f"no run with id or id prefix {run_id!r} in {self} (it holds no runs yet)")
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

    def has_tag(self, tag: str) -> ColumnElement[bool]:
        if self.engine.dialect.name == "postgresql":
            return cast(RunRow.tags, JSONB).contains([tag])
        values = func.json_each(RunRow.tags).table_valued("value")
        return exists().select_from(values).where(values.c.value == tag)

    def runs(self, *, status: Status | str | None = None, scenario: str | None = None, model: str | None = None,
             technique: str | None = None, sweep_id: str | None = None, tag: str | None = None,
             limit: int | None = None) -> list[RunRecord]:
        """Stored runs matching every given filter, newest first."""
        if not self._ready_for_reading():
            return []
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
            q = q.where(self.has_tag(tag))
        with Session(self.engine) as session:
            return [_from_row(row) for row in session.scalars(q.limit(limit))]

    def find_completed(self, config_hash: str) -> str | None:
        """Id of the newest `ok` run of this config hash, so a re-run sweep can skip it."""
        if not self._ready_for_reading():
            return None
        q = select(RunRow.id).where(RunRow.config_hash == config_hash, RunRow.status == Status.OK.value)
        with Session(self.engine) as session:
            return session.scalar(_newest_first(q).limit(1))

    @property
    def query(self):
        from effbench.store.sql_queries import SqlQueries

        return SqlQueries(self)

    def metrics_frame(self, run_ids: Iterable[str] | None = None):
        """One row per run x metric (effbench.store.export's columns), computed in SQL."""
        if not self._ready_for_reading():
            return typed_frame([])
        q = select(
            *(getattr(RunRow, c) for c in RUN_FRAME_COLUMNS),
            *(getattr(MetricRow, c) for c in METRIC_FRAME_COLUMNS),
        ).join(RunRow.metrics)
        if run_ids is not None:
            q = q.where(RunRow.id.in_(list(run_ids)))
        with Session(self.engine) as session:
            rows = session.execute(_newest_first(q).order_by(MetricRow.id)).all()
        return typed_frame(rows)

    def export(self, path: str | os.PathLike[str], fmt: str | None = None) -> int:
        """Write every run to `path`: json (full records, importable) or csv/parquet
        (the metrics frame). `fmt` defaults to the file suffix. Returns records or rows written."""
        fmt = export_format(path, fmt)
        if fmt == "json":
            return write_export(path, fmt, records=self.runs())
        return write_export(path, fmt, frame=self.metrics_frame())

    def import_records(self, records: list[RunRecord]) -> tuple[int, int]:
        """Add validated runs in one transaction; (added, already present by id). A bad
        record was refused before (effbench.store.records_io), so nothing is half-imported."""
        ids = [r.id for r in records]
        with self._writing() as session:
            # Chunked: SQLite and PostgreSQL cap the bound parameters of one statement.
            present = {
                run_id
                for k in range(0, len(ids), 1000)
                for run_id in session.scalars(select(RunRow.id).where(RunRow.id.in_(ids[k : k + 1000])))
            }
            session.add_all(_to_row(r) for r in records if r.id not in present)
        return len(records) - len(present), len(present)
