"""The store interface: what every results store implements, and the URL
schemes that pick one (registered like techniques, imported when used).

    sqlite:///results/effbench.db           effbench.store.sql.SqlStore (the default)
    postgresql+psycopg://user@host/db       effbench.store.sql.SqlStore
    json:///shared/results/sweep-42         effbench.store.jsondir.JsonDirStore

A run is written whole or not at all. A writable store creates its database on
its first write, so a command that fails on bad input leaves nothing behind; a
read-only store must exist and be an effbench store of this version, or it
says what is wrong and what to run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

from effbench.errors import ConfigError
from effbench.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

    from effbench.metrics.record import RunRecord, Status

DEFAULT_URL = "sqlite:///results/effbench.db"


class StoreError(ConfigError):
    """A store that cannot be used as asked: the message says why and what to do (exit code 2)."""


class StoreMissing(StoreError):
    """A read-only store that does not exist yet."""


class StoreVersionError(StoreError):
    """A store written by an older or newer effbench, which this one would misread."""


def default_url() -> str:
    """`$EFFBENCH_DB_URL`, else a SQLite file under ./results."""
    return os.environ.get("EFFBENCH_DB_URL") or DEFAULT_URL


@dataclass(frozen=True)
class Filters:
    """Which runs a query covers; empty means no restriction. Hashable, so it keys caches."""

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


RUN_COLUMNS = ("id", "created_at", "status", "axis", "scenario", "model", "technique", "hardware")
# The headline value with the median's 95% interval (null below 6 samples), the mean with its
# own, and why a figure is invalid (null: valid): what effbench.compare judges figures by.
METRIC_COLUMNS = ("name", "value", "unit", "source", "higher_is_better", "median", "median_ci95_low",
                  "median_ci95_high", "mean", "ci95_low", "ci95_high", "n", "invalid")


class StoreQueries(Protocol):
    """The leaderboard's reads, answered by the store in its own way (SQL, or pandas over records).
    Frames have the columns named in each docstring."""

    def version(self) -> tuple[int, str | None]:
        """(run count, newest created_at): changes with every new run."""

    def count_runs(self, f: Filters) -> int: ...

    def facets(self) -> dict[str, list]:
        """Distinct axis, scenario, model, technique, hardware, status, tag and metric names; `dates`: first, last."""

    def run_page(self, f: Filters, sort: str | None, descending: bool, offset: int, limit: int) -> pd.DataFrame:
        """RUN_COLUMNS + tags, error: one page, sorted by a metric's value (missing last) or by time."""

    def metric_rows(self, run_ids: Sequence[str], names: Iterable[str], like: str | None,
                    samples: bool) -> pd.DataFrame:
        """run_id + METRIC_COLUMNS (+ samples) of these runs whose name is in `names` or matches the SQL
        LIKE pattern `like`; every metric when neither is given."""

    def latest_ok_runs(self, f: Filters) -> pd.DataFrame:
        """RUN_COLUMNS + config (dict) + parameters: the newest ok run per config and hardware."""


class Store(Protocol):
    url: str
    read_only: bool

    def write(self, record: RunRecord) -> None:
        """Store one run atomically; RecordError if it is malformed or its id is already stored."""

    def get(self, run_id: str) -> RunRecord:
        """The run with this id or unique id prefix; KeyError naming the problem."""

    def runs(self, *, status: Status | str | None = None, scenario: str | None = None, model: str | None = None,
             technique: str | None = None, sweep_id: str | None = None, tag: str | None = None,
             limit: int | None = None) -> list[RunRecord]:
        """Runs matching every given filter, newest first."""

    def find_completed(self, config_hash: str) -> str | None:
        """Id of the newest ok run of this config hash (a re-run sweep skips it)."""

    def import_records(self, records: list[RunRecord]) -> tuple[int, int]:
        """Add validated records in one transaction; (added, already present by id)."""

    def export(self, path: str | os.PathLike[str], fmt: str | None = None) -> int:
        """Every run to json (records) / csv / parquet; returns what was written."""

    @property
    def query(self) -> StoreQueries: ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: object) -> None: ...


STORES: Registry[type] = Registry("results-store URL scheme")
STORES.register("sqlite", "effbench.store.sql:SqlStore", example="sqlite:///results/effbench.db")
STORES.register("postgresql", "effbench.store.sql:SqlStore", example="postgresql+psycopg://user@host:5432/effbench")
STORES.register("json", "effbench.store.jsondir:JsonDirStore", example="json:///shared/results/sweep-42")


def scheme_of(url: str) -> str:
    """`postgresql+psycopg://…` → postgresql; a URL without a scheme is an error naming the valid ones."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise StoreError(f"store URL {url!r} has no scheme: {_choices()}")
    return scheme.split("+", 1)[0]


def _choices() -> str:
    return "use " + ", ".join(e.meta["example"] for e in STORES)


def store_class(url: str) -> type:
    scheme = scheme_of(url)
    if scheme not in STORES:
        raise StoreError(f"store URL {url!r}: unknown scheme {scheme!r}; {_choices()}")
    return STORES.get(scheme)


def check_url(url: str | None) -> str:
    """The URL to use (the default when None), or StoreError naming what is wrong; opens nothing."""
    url = url or default_url()
    store_class(url).check_url(url)
    return url


def open_store(url: str | None = None, read_only: bool = False) -> Store:
    """The store at `url` (default: $EFFBENCH_DB_URL, else sqlite:///results/effbench.db)."""
    url = check_url(url)
    return store_class(url)(url, read_only=read_only)


def newest_first(records: Iterable[RunRecord]) -> list[RunRecord]:
    return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)


def record_matches(r: RunRecord, *, status: Any = None, scenario: str | None = None, model: str | None = None,
                   technique: str | None = None, sweep_id: str | None = None, tag: str | None = None) -> bool:
    """The `runs` filters, for stores that filter in Python."""
    from effbench.metrics.record import Status

    return ((status is None or r.status is Status(status)) and (scenario is None or r.scenario == scenario)
            and (model is None or r.model == model) and (technique is None or r.technique == technique)
            and (sweep_id is None or r.sweep_id == sweep_id) and (tag is None or tag in r.tags))
