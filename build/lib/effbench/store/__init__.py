"""Results store: run records in SQLite, PostgreSQL or a directory of JSON files,
behind one interface (effbench.store.base.Store) picked by URL scheme."""

from effbench.store.base import (STORES, Filters, Store, StoreError, StoreMissing, StoreVersionError, default_url,
                                 open_store)
from effbench.store.validate import RecordError, record_from_dict

__all__ = ["STORES", "Filters", "RecordError", "Store", "StoreError", "StoreMissing", "StoreVersionError",
           "default_url", "open_store", "record_from_dict"]
