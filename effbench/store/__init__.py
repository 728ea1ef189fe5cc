"""Results store: run records in SQLite or PostgreSQL (SPEC §4)."""

from effbench.store.store import ResultStore, default_url
from effbench.store.validate import RecordError, record_from_dict

__all__ = ["RecordError", "ResultStore", "default_url", "record_from_dict"]
