"""The results store on SQLite and, when EFFBENCH_TEST_PG_URL is set, PostgreSQL."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from factories import make_metric, make_record
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from effbench.metrics.record import Source, Status, Summary
from effbench.store import RecordError, StoreError, StoreMissing, default_url, open_store
from effbench.store.schema import MetricRow, RunRow
from effbench.store.records_io import read_records
from effbench.store.sql import SqlStore

PG_URL = os.environ.get("EFFBENCH_TEST_PG_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes URLs of empty databases of one backend; PostgreSQL gets a fresh schema each."""
    if request.param == "sqlite":
        yield lambda: f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"
        return
    if not PG_URL:
        pytest.skip("EFFBENCH_TEST_PG_URL is not set")
    admin = create_engine(PG_URL)
    schemas: list[str] = []

    def fresh() -> str:
        schemas.append(f"t_{uuid.uuid4().hex}")
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schemas[-1]}"))  # a name made here, not input
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schemas[-1]}"})
        return url.render_as_string(hide_password=False)

    yield fresh
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def store(new_url: Callable[[], str]) -> Iterator[SqlStore]:
    with open_store(new_url()) as s:
        yield s


def import_json(store: SqlStore, path: Path) -> tuple[int, int]:
    return store.import_records(read_records(path).records)


def counts(store: SqlStore) -> tuple[int, int]:
    if store.schema_revision() is None:  # created on the first write
        return 0, 0
    with store.engine.connect() as conn:
        runs = conn.scalar(select(func.count()).select_from(RunRow))
        metrics = conn.scalar(select(func.count()).select_from(MetricRow))
    return runs, metrics


def test_round_trip_keeps_samples_and_summary(store: SqlStore) -> None:
    record = make_record(sweep_id="sweep-1", tags=["smoke", "nightly"], config={"nested": {"x": [1, 2.5, None]}})
    store.write(record)

    got = store.get(record.id)
    assert got.to_dict() == record.to_dict()
    assert [m.samples for m in got.metrics] == [m.samples for m in record.metrics]
    with Session(store.engine) as session:
        rows = session.scalars(select(MetricRow).order_by(MetricRow.id)).all()
    assert [r.name for r in rows] == [m.name for m in record.metrics]
    for row, metric in zip(rows, record.metrics, strict=True):
        s = Summary.of(metric.samples)
        stored = (row.n, row.median, row.mean, row.p90, row.p99, row.std, row.ci95_low, row.ci95_high)
        assert stored == (s.n, s.median, s.mean, s.p90, s.p99, s.std, s.ci95_low, s.ci95_high)


def test_get_by_unique_prefix(store: SqlStore) -> None:
    for run_id in ("abc1", "abc2", "abd1"):
        store.write(make_record(id=run_id))
    assert store.get("abd").id == "abd1"
    assert store.get("abc1").id == "abc1"
    with pytest.raises(KeyError, match="ambiguous.*abc1, abc2"):
        store.get("abc")
    with pytest.raises(KeyError, match="no run"):
        store.get("zzz")
    with pytest.raises(KeyError, match="no run"):
        store.get("a%")  # a LIKE wildcard is matched literally


def test_failure_mid_write_leaves_no_rows(store: SqlStore) -> None:
    def fail_on_metrics(conn, cursor, statement, *args) -> None:
        if statement.startswith("INSERT INTO metrics"):
            raise RuntimeError("disk full")

    event.listen(store.engine, "before_cursor_execute", fail_on_metrics)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            store.write(make_record())
    finally:
        event.remove(store.engine, "before_cursor_execute", fail_on_metrics)
    assert counts(store) == (0, 0)

    store.write(make_record())
    assert counts(store) == (1, 3)


def test_duplicate_metric_or_run_is_refused_whole(store: SqlStore) -> None:
    with pytest.raises(RecordError, match=r"metrics\[1\]\.name.*repeats 'latency_ms'"):
        store.write(make_record(metrics=[make_metric(), make_metric()]))
    assert counts(store) == (0, 0)

    record = make_record()
    store.write(record)
    with pytest.raises(RecordError, match="already stored"):
        store.write(make_record(id=record.id, metrics=[make_metric("other")]))
    assert counts(store) == (1, 3)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"metrics": [make_metric(value=math.nan)]}, "metrics[0].value"),
        ({"metrics": [make_metric(samples=[1.0, math.inf])]}, "metrics[0].samples[1]"),
        ({"config": {"lr": math.nan}}, "config.lr"),
        ({"duration_s": math.nan}, "duration_s"),
    ],
)
def test_non_finite_numbers_are_rejected(store: SqlStore, overrides: dict, field: str) -> None:
    with pytest.raises(RecordError, match=re.escape(f"field '{field}' must be a finite number")):
        store.write(make_record(**overrides))
    assert counts(store) == (0, 0)


def _write_runs(url: str, worker: int, n: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()  # open the fresh file at once: table creation races too
    with open_store(url) as store:
        for i in range(n):
            store.write(make_record(id=f"w{worker}-{i:02d}"))


def test_two_processes_write_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_write_runs, args=(url, w, 20, barrier)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0]

    with open_store(url) as store:
        assert counts(store) == (40, 120)
        assert {r.id for r in store.runs()} == {f"w{w}-{i:02d}" for w in range(2) for i in range(20)}
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_find_completed_returns_newest_ok_run(store: SqlStore) -> None:
    old = make_record(id="old", config_hash="h1")
    new = make_record(id="new", config_hash="h1")
    failed = make_record(id="failed", config_hash="h1", status="failed", error="OOM", metrics=[])
    other = make_record(id="other", config_hash="h2", status="skipped", metrics=[])
    for r in (new, old, failed, other):
        store.write(r)
    assert store.find_completed("h1") == "new"
    assert store.find_completed("h2") is None
    assert store.find_completed("nope") is None


def test_filters_limit_and_order(store: SqlStore) -> None:
    store.write(make_record(id="a", model="m1", technique="lora", tags=["x"], sweep_id="s1"))
    store.write(make_record(id="b", model="m1", technique="qlora", tags=["x", "y"], sweep_id="s1"))
    store.write(make_record(id="c", model="m2", scenario="prefill", status="failed", error="boom", tags=[]))

    def ids(**filters) -> list[str]:
        return [r.id for r in store.runs(**filters)]

    assert ids() == ["c", "b", "a"]
    assert ids(model="m1") == ["b", "a"]
    assert ids(technique="lora") == ["a"]
    assert ids(scenario="prefill") == ["c"]
    assert ids(status="failed") == ids(status=Status.FAILED) == ["c"]
    assert ids(sweep_id="s1", tag="y") == ["b"]
    assert ids(tag="x") == ["b", "a"]
    assert ids(tag="nope") == []
    assert ids(limit=2) == ["c", "b"]
    assert store.runs(status="failed")[0].error == "boom"


def test_injection_attempts_are_plain_values(store: SqlStore) -> None:
    sly = "x' OR '1'='1"
    store.write(make_record(id="plain"))
    store.write(make_record(id="sly", model=sly, tags=[sly]))

    assert store.runs(model="x' OR '1'='1'; DROP TABLE runs; --") == []
    assert store.runs(technique="' OR 1=1 --") == []
    assert store.runs(tag='x" OR 1=1 --') == []
    assert [r.id for r in store.runs(model=sly)] == ["sly"]
    assert [r.id for r in store.runs(tag=sly)] == ["sly"]
    with pytest.raises(KeyError):
        store.get("' OR '1'='1")
    assert store.find_completed("' OR '1'='1") is None
    assert counts(store) == (2, 6)


def test_read_only_store_refuses_writes(new_url: Callable[[], str], tmp_path: Path) -> None:
    url = new_url()
    record = make_record()
    with open_store(url) as writer:
        writer.write(record)

    with open_store(url, read_only=True) as reader:
        assert reader.get(record.id).to_dict() == record.to_dict()
        with pytest.raises(PermissionError, match="read-only"):
            reader.write(make_record())
        path = tmp_path / "export.json"
        reader.export(path, "json")
        with pytest.raises(PermissionError):
            reader.import_records(read_records(path).records)
        # The database itself refuses, not just the Python API.
        with pytest.raises(DBAPIError), reader.engine.begin() as conn:
            conn.execute(text("DELETE FROM runs"))
        assert counts(reader) == (1, 3)


def test_read_only_sqlite_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(StoreMissing, match="no results store"):
        open_store(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)
    assert not (tmp_path / "missing.db").exists()


def test_deleting_a_run_cascades_to_its_metrics(store: SqlStore) -> None:
    store.write(make_record(id="gone"))
    store.write(make_record(id="kept"))
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM runs WHERE id = :id"), {"id": "gone"})
    assert counts(store) == (1, 3)


def test_json_export_import_round_trips_and_is_idempotent(
    store: SqlStore, new_url: Callable[[], str], tmp_path: Path
) -> None:
    records = [
        make_record(sweep_id="s"),
        make_record(status="failed", error="CUDA OOM", metrics=[], duration_s=None),
        make_record(tags=[], seed=2**40),
    ]
    for r in records:
        store.write(r)
    path = tmp_path / "out" / "runs.json"
    assert store.export(path, "json") == 3

    with open_store(new_url()) as fresh:
        assert import_json(fresh, path) == (3, 0)
        assert import_json(fresh, path) == (0, 3)
        assert counts(fresh) == counts(store) == (3, 6)
        assert [r.to_dict() for r in fresh.runs()] == [r.to_dict() for r in store.runs()]
    assert import_json(store, path) == (0, 3)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tabular_exports_have_one_row_per_metric(store: SqlStore, tmp_path: Path, fmt: str) -> None:
    first, second = make_record(), make_record(metrics=[make_metric("energy_j", source=Source.ESTIMATED)])
    store.write(first)
    store.write(second)
    store.write(make_record(status="skipped", metrics=[]))  # no metrics, no rows
    path = tmp_path / f"metrics.{fmt}"
    assert store.export(path) == 4

    frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    assert list(frame.columns) == list(store.metrics_frame().columns)
    assert len(frame) == 4
    assert list(zip(frame["id"], frame["name"], strict=True)) == [
        (second.id, "energy_j"),
        *((first.id, m.name) for m in first.metrics),
    ]
    latency = frame[(frame["id"] == first.id) & (frame["name"] == "latency_ms")].iloc[0]
    s = first.metric("latency_ms").summary
    assert (latency["value"], latency["median"], latency["p99"], latency["n"]) == (12.5, s.median, s.p99, s.n)
    assert latency["source"] == "timer"


def test_metrics_frame_selects_runs(store: SqlStore) -> None:
    keep, drop = make_record(), make_record()
    store.write(keep)
    store.write(drop)
    frame = store.metrics_frame([keep.id])
    assert set(frame["id"]) == {keep.id}
    assert len(frame) == 3
    assert str(frame["created_at"].dtype) == "datetime64[us, UTC]"
    assert store.metrics_frame([]).empty


def _bad_source(d: dict) -> None:
    d["metrics"][2]["source"] = "guess"


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: d.pop("model"), "record 1: field 'model' is missing"),
        (
            _bad_source,
            "record 1: field 'metrics[2].source' must be one of "
            "counter, sampled, timer, analytic, estimated, got 'guess'",
        ),
        (lambda d: d.update(status="done"), "record 1: field 'status' must be one of ok, failed, skipped, got 'done'"),
        (
            lambda d: d["metrics"][0].update(value="fast"),
            "record 1: field 'metrics[0].value' must be a number, got 'fast'",
        ),
        (lambda d: d["metrics"][1].pop("unit"), "record 1: field 'metrics[1].unit' is missing"),
        (lambda d: d["metrics"][0]["summary"].update(mean=1.0), "record 1: field 'metrics[0].summary.mean' is 1.0"),
        (lambda d: d.update(seed="7"), "record 1: field 'seed' must be a 64-bit integer, got '7'"),
        (lambda d: d.update(created_at="yesterday"), "record 1: field 'created_at' must be an ISO-8601 timestamp"),
        (lambda d: d.update(modle="typo"), "record 1: field 'modle' is not a known field"),
    ],
)
def test_malformed_import_names_the_field_and_writes_nothing(
    store: SqlStore, tmp_path: Path, corrupt: Callable[[dict], None], message: str
) -> None:
    data = [make_record().to_dict(), make_record().to_dict()]
    corrupt(data[1])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError) as info:
        import_json(store, path)
    assert str(info.value).startswith(message)
    assert counts(store) == (0, 0)


def test_import_refuses_nan_repeated_ids_and_non_lists(store: SqlStore, tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    record = make_record().to_dict()
    record["metrics"][0]["samples"][0] = math.nan  # json.dumps writes NaN, json.loads reads it
    path.write_text(json.dumps([record]))
    with pytest.raises(RecordError, match=r"record 0: field 'metrics\[0\]\.samples\[0\]' must be a finite number"):
        import_json(store, path)

    twice = make_record().to_dict()
    path.write_text(json.dumps([twice, twice]))
    with pytest.raises(RecordError, match="record 1: field 'id' repeats"):
        import_json(store, path)

    path.write_text(json.dumps(twice))
    with pytest.raises(RecordError, match="expected a JSON list"):
        import_json(store, path)
    assert counts(store) == (0, 0)


def test_default_url_and_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EFFBENCH_DB_URL", "sqlite:///elsewhere/x.db")
    assert default_url() == "sqlite:///elsewhere/x.db"
    monkeypatch.delenv("EFFBENCH_DB_URL")
    assert default_url() == "sqlite:///results/effbench.db"
    with open_store() as store:
        store.write(make_record())
    assert (tmp_path / "results" / "effbench.db").is_file()


def test_unsupported_backend_is_named() -> None:
    with pytest.raises(StoreError, match="unknown scheme 'mysql'; use .*sqlite:///results/effbench.db"):
        open_store("mysql://u@h/db")
