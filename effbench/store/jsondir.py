"""Run records as one JSON file per run in a directory, for sweep jobs that
cannot reach a database (cluster nodes without access to it, air-gapped jobs).

    effbench run --multirun hydra/launcher=slurm store.url=json:///shared/results/sweep-42 ...
    effbench import /shared/results/sweep-42      # afterwards, into the real store; re-import adds nothing

`store.url=json:///absolute/dir` (or `json://relative/dir`) selects it; the
`ResultStore` constructor hands such a URL to `JsonDirStore`, so a sweep job,
the sweep report and `effbench list/show` work unchanged.

Each run is written whole or not at all: the record goes to a temporary file in
the same directory and is renamed into place (atomic on POSIX), so a job killed
mid-write leaves no partial record, and readers running beside writers never see
one. A file holds a JSON list with the one record — the same format as
`effbench export`, so any single file can also be imported or gated on its own.
File names start with the config hash, which is how a resumed sweep finds the
pairs it has already completed without reading every record.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from effbench.metrics.record import RunRecord, Status
from effbench.store.validate import RecordError, record_from_dict

SCHEME = "json://"
_HASH_CHARS = 16


def is_json_dir_url(url: Any) -> bool:
    return isinstance(url, str) and url.startswith(SCHEME)


def json_dir_path(url: str) -> Path:
    """`json:///abs/dir` → /abs/dir; `json://rel/dir` → rel/dir."""
    path = url[len(SCHEME):]
    if not path:
        raise ValueError(f"{url!r} names no directory: use json:///absolute/dir or json://relative/dir")
    return Path(path)


def _record_file_name(record: RunRecord) -> str:
    return f"{record.config_hash[:_HASH_CHARS]}-{record.id}.json"


def load_record_file(path: Path) -> list[RunRecord]:
    """Validated records of one file: a list of records (an export) or a single record object."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise RecordError(f"{path.name}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{path.name}: not valid JSON: {e}") from None
    items = data if isinstance(data, list) else [data]
    out = []
    for i, d in enumerate(items):
        try:
            out.append(record_from_dict(d))
        except RecordError as e:
            where = f"record {i}: " if isinstance(data, list) and len(data) > 1 else ""
            raise RecordError(f"{path.name}: {where}{e}") from None
    return out


def _record_files(directory: Path) -> list[Path]:
    # Hidden names are temporary files of writes in progress.
    return sorted(p for p in directory.glob("*.json") if not p.name.startswith(".") and p.is_file())


def read_records(directory: str | os.PathLike[str]) -> list[RunRecord]:
    """Every record in the directory, validated, newest first. Raises RecordError
    naming the file and the field of the first bad record, or an id that two
    files give to different records."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RecordError(f"{directory}: no such directory of JSON records")
    records: dict[str, RunRecord] = {}
    origin: dict[str, str] = {}
    for path in _record_files(directory):
        for r in load_record_file(path):
            if r.id in records:
                if records[r.id].to_dict() != r.to_dict():
                    raise RecordError(f"{path.name}: field 'id' repeats {r.id!r} of {origin[r.id]} "
                                      "with a different record")
                continue
            records[r.id] = r
            origin[r.id] = path.name
    return sorted(records.values(), key=lambda r: (r.created_at, r.id), reverse=True)


class JsonDirStore:
    """The part of the ResultStore interface a sweep job and the read-only
    commands need (write, get, runs, find_completed, export to JSON), over a
    directory of per-run JSON files."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = url if is_json_dir_url(url) else SCHEME + str(url)
        self.path = json_dir_path(self.url)
        self.read_only = read_only
        if read_only:
            if not self.path.is_dir():
                raise FileNotFoundError(f"no results directory at {self.path.resolve()}")
        else:
            self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"JsonDirStore({self.url!r})"

    def __enter__(self) -> JsonDirStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _files(self, pattern: str = "*.json") -> Iterator[Path]:
        return (p for p in sorted(self.path.glob(pattern)) if not p.name.startswith("."))

    def write(self, record: RunRecord) -> None:
        """Store one run atomically (temporary file, then rename). Raises RecordError
        if the record is malformed or its id is already stored."""
        if self.read_only:
            raise PermissionError(f"{self} is read-only")
        try:
            record = record_from_dict(asdict(record))
        except RecordError as e:
            raise RecordError(f"run {record.id!r}: {e}") from None
        if "/" in record.id or "\\" in record.id or record.id.startswith("."):
            raise RecordError(f"field 'id' must be usable as a file name, got {record.id!r}")
        if any(self._files(f"*-{glob.escape(record.id)}.json")):
            raise RecordError(f"run {record.id!r} is already stored in {self}")
        text = json.dumps([record.to_dict()], indent=1, allow_nan=False) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{record.id}.", suffix=".partial")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / _record_file_name(record))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, run_id: str) -> RunRecord:
        """The run with this id, or with this unique id prefix."""
        if not run_id:
            raise KeyError("no run id given")
        matches = {r.id: r for p in self._files(f"*-{glob.escape(run_id)}*.json") for r in load_record_file(p)
                   if r.id.startswith(run_id)}
        if run_id in matches:
            return matches[run_id]
        if not matches:
            raise KeyError(f"no run with id or id prefix {run_id!r} in {self}")
        if len(matches) > 1:
            ids = sorted(matches)
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise KeyError(f"run id prefix {run_id!r} is ambiguous ({shown}): give more characters")
        return next(iter(matches.values()))

    def runs(self, *, status: Status | str | None = None, scenario: str | None = None, model: str | None = None,
             technique: str | None = None, sweep_id: str | None = None, tag: str | None = None,
             limit: int | None = None) -> list[RunRecord]:
        """Stored runs matching every given filter, newest first."""
        want = None if status is None else Status(status)
        out = [r for r in read_records(self.path)
               if (want is None or r.status is want) and (scenario is None or r.scenario == scenario)
               and (model is None or r.model == model) and (technique is None or r.technique == technique)
               and (sweep_id is None or r.sweep_id == sweep_id) and (tag is None or tag in r.tags)]
        return out[:limit] if limit is not None else out

    def find_completed(self, config_hash: str) -> str | None:
        """Id of the newest `ok` run of this config hash, so a resumed sweep can skip it."""
        done = [r for p in self._files(f"{glob.escape(config_hash[:_HASH_CHARS])}-*.json") for r in load_record_file(p)
                if r.config_hash == config_hash and r.status is Status.OK]
        return max(done, key=lambda r: (r.created_at, r.id)).id if done else None

    def export(self, path: str | os.PathLike[str], fmt: str | None = None) -> int:
        """All records as one JSON list (csv/parquet: import into a database first)."""
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt != "json":
            raise ValueError(f"a JSON results directory exports only json; `effbench import {self.path}` into a "
                             "database to export csv or parquet")
        records = [r.to_dict() for r in self.runs()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=2, allow_nan=False) + "\n")
        return len(records)


def import_json_dir(store: Any, directory: str | os.PathLike[str]) -> tuple[int, int]:
    """Add every record of a JSON-record directory to a database ResultStore;
    returns (added, already present by id). All records are validated before
    anything is written, and the new ones go in one transaction, so a bad file
    leaves the store as it was and a re-import adds nothing."""
    from sqlalchemy import select

    from effbench.store.schema import RunRow
    from effbench.store.store import _to_row

    records = {r.id: r for r in read_records(directory)}
    ids = list(records)
    with store._writing() as session:
        present = {
            run_id
            for k in range(0, len(ids), 1000)
            for run_id in session.scalars(select(RunRow.id).where(RunRow.id.in_(ids[k: k + 1000])))
        }
        session.add_all(_to_row(r) for run_id, r in records.items() if run_id not in present)
    return len(records) - len(present), len(present)
