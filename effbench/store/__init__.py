"""Results store: run records in SQLite or PostgreSQL (SPEC §4)."""

from effbench.store.jsondir import JsonDirStore
from effbench.store.store import ResultStore, default_url
from effbench.store.validate import RecordError, record_from_dict

__all__ = ["JsonDirStore", "RecordError", "ResultStore", "default_url", "record_from_dict"]
