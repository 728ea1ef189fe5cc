"""The leaderboard's reads of the results store, through the store interface
(effbench.store.base.StoreQueries): SQL stores answer in SQL, a `json://`
directory with pandas. Read-only."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from effbench.compare import workload_key
from effbench.store import Filters, Store, StoreError, StoreMissing, open_store as _open
from effbench.store.base import METRIC_COLUMNS, RUN_COLUMNS

FIRST_SWEEP = "make demo   # or: effbench run --multirun sweep=quick"

__all__ = ["FIRST_SWEEP", "METRIC_COLUMNS", "RUN_COLUMNS", "Filters", "StoreUnavailable", "count_runs", "facets",
           "latest_ok_runs", "metric_rows", "open_store", "run_page", "version"]


class StoreUnavailable(Exception):
    """The store cannot be read: the message says why and what to do."""


def open_store(url: str) -> Store:
    """A read-only store that answers, or StoreUnavailable with the reason."""
    try:
        return _open(url, read_only=True)
    except StoreMissing as e:
        raise StoreUnavailable(f"{e}. Run a first sweep to create it:\n\n    {FIRST_SWEEP}") from None
    except StoreError as e:
        raise StoreUnavailable(str(e)) from None


def version(store: Store) -> tuple[int, str | None]:
    """How many runs the store holds and when the newest was made: changes with every new run."""
    return store.query.version()


def count_runs(store: Store, f: Filters = Filters()) -> int:
    return store.query.count_runs(f)


def facets(store: Store) -> dict[str, list]:
    """Distinct values of each filterable field, the metric names, and the first and last run date."""
    return store.query.facets()


def run_page(store: Store, f: Filters, sort: str | None = None, descending: bool = True,
             offset: int = 0, limit: int = 100) -> pd.DataFrame:
    """One page of matching runs (run columns, tags, error); sorted by a metric's value
    (missing last) or, when `sort` is None, by time."""
    return store.query.run_page(f, sort, descending, offset, limit)


def metric_rows(store: Store, run_ids: Sequence[str], names: Iterable[str] = (), like: str | None = None,
                samples: bool = False) -> pd.DataFrame:
    """Metric rows (METRIC_COLUMNS, and samples if asked) of these runs whose name is
    in `names` or matches the LIKE pattern; all metrics if neither is given."""
    return store.query.metric_rows(list(run_ids), names, like, samples)


def latest_ok_runs(store: Store, f: Filters = Filters()) -> pd.DataFrame:
    """The newest ok run per (axis, workload, hardware, model, technique): the runs the
    overview ranks and the Explorer plots. Columns: RUN_COLUMNS, config (dict), workload
    (effbench.compare.workload_key), parameters."""
    runs = store.query.latest_ok_runs(f)
    runs["workload"] = [workload_key(c) for c in runs["config"]]
    runs["parameters"] = runs["parameters"].astype(float)
    return (runs.sort_values(["created_at", "id"], ascending=False)
            .drop_duplicates(["axis", "scenario", "workload", "hardware", "model", "technique"])
            .reset_index(drop=True))
