"""Run records as JSON files: an export (`effbench export runs.json`, a list of
records), a single record file, or a directory of them (a `json://` store).
Every record is validated; a bad one is refused naming the file and field."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effbench.metrics.record import RunRecord
from effbench.store.base import newest_first
from effbench.store.validate import RecordError, record_from_dict


@dataclass
class LoadedRecords:
    records: list[RunRecord]  # newest first, one per id
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) left out with skip_invalid


def _read_json(path: Path, shown: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise RecordError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{shown}: not valid JSON: {e}") from None


def load_record_file(path: Path) -> list[RunRecord]:
    """Validated records of one file: a list of records (an export) or a single record object."""
    data = _read_json(path, path.name)
    items = data if isinstance(data, list) else [data]
    out = []
    for i, d in enumerate(items):
        try:
            out.append(record_from_dict(d))
        except RecordError as e:
            where = f"record {i}: " if isinstance(data, list) and len(data) > 1 else ""
            raise RecordError(f"{path.name}: {where}{e}") from None
    return out


def record_files(directory: Path) -> list[Path]:
    # Hidden names are temporary files of writes in progress.
    return sorted(p for p in directory.glob("*.json") if not p.name.startswith(".") and p.is_file())


def _one_per_id(loaded: list[tuple[str, RunRecord]]) -> dict[str, RunRecord]:
    records: dict[str, RunRecord] = {}
    origin: dict[str, str] = {}
    for where, r in loaded:
        if r.id in records:
            if records[r.id].to_dict() != r.to_dict():
                raise RecordError(f"{where}: field 'id' repeats {r.id!r} of {origin[r.id]} with a different record")
            continue
        records[r.id] = r
        origin[r.id] = where
    return records


def read_records(path: str | os.PathLike[str], skip_invalid: bool = False) -> LoadedRecords:
    """Every record of a file or directory, validated, newest first. Raises RecordError naming the
    file and field of the first bad record — or, with `skip_invalid` (directories), leaves that file
    out and lists it in `skipped`."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such file or directory of JSON run records")
    loaded: list[tuple[str, RunRecord]] = []
    skipped: list[tuple[str, str]] = []
    if path.is_dir():
        for p in record_files(path):
            try:
                loaded += [(p.name, r) for r in load_record_file(p)]
            except RecordError as e:
                if not skip_invalid:
                    raise
                skipped.append((p.name, str(e).removeprefix(f"{p.name}: ")))
    else:
        data = _read_json(path, str(path))
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected a JSON list of run records (an `effbench export`), "
                              f"got {type(data).__name__}")
        index: dict[str, int] = {}
        for i, d in enumerate(data):
            try:
                record = record_from_dict(d)
            except RecordError as e:
                raise RecordError(f"record {i}: {e}") from None
            if record.id in index:
                raise RecordError(f"record {i}: field 'id' repeats {record.id!r} of record {index[record.id]}")
            index[record.id] = i
            loaded.append((f"record {i}", record))
    return LoadedRecords(newest_first(_one_per_id(loaded).values()), skipped)
