"""Run records as one JSON file per run in a directory, for sweep jobs that
cannot reach a database (cluster nodes without access to it, air-gapped jobs).

    effbench run --multirun hydra/launcher=slurm store.url=json:///shared/results/sweep-42 ...
    effbench import /shared/results/sweep-42      # afterwards, into the real store; re-import adds nothing

`store.url=json:///absolute/dir` (or `json://relative/dir`) selects it; a sweep
job, the sweep report, `effbench list/show`, the gate and the leaderboard work
on it unchanged (it implements effbench.store.base.Store).

Each run is written whole or not at all: the record goes to a temporary file in
the same directory and is renamed into place (atomic on POSIX), so a job killed
mid-write leaves no partial record, and readers running beside writers never see
one. A file holds a JSON list with the one record — the same format as
`effbench export`, so any single file can also be imported or gated on its own.
Files are readable by the group and others as the umask allows (a colleague's
import on a shared file system must be able to read them). File names start
with the config hash, which is how a resumed sweep finds the pairs it has
already completed without reading every record.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from effbench.metrics.record import RunRecord, Status
from effbench.store.base import StoreError, StoreMissing, record_matches
from effbench.store.records_io import load_record_file, read_records
from effbench.store.validate import RecordError, record_from_dict

SCHEME = "json://"
_HASH_CHARS = 16


def json_dir_path(url: str) -> Path:
    """`json:///abs/dir` → /abs/dir; `json://rel/dir` → rel/dir."""
    path = url[len(SCHEME):]
    if not path:
        raise StoreError(f"{url!r} names no directory: use json:///absolute/dir or json://relative/dir")
    return Path(path)


def _record_file_name(record: RunRecord) -> str:
    return f"{record.config_hash[:_HASH_CHARS]}-{record.id}.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class JsonDirStore:
    """A directory of per-run JSON files (see the module docstring)."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = url
        self.path = json_dir_path(url)
        self.read_only = read_only
        if read_only and not self.path.is_dir():
            raise StoreMissing(f"no results directory at {self.path.resolve()}: run `effbench run "
                               f"store.url={url}` to make one")

    @staticmethod
    def check_url(url: str) -> None:
        path = json_dir_path(url)
        if path.exists() and not path.is_dir():
            raise StoreError(f"store URL {url!r}: {path} is a file, not a directory of JSON records")

    def __repr__(self) -> str:
        return f"JsonDirStore({self.url!r})"

    def __enter__(self) -> JsonDirStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _files(self, pattern: str = "*.json") -> Iterator[Path]:
        if not self.path.is_dir():
            return iter(())
        return (p for p in sorted(self.path.glob(pattern)) if not p.name.startswith("."))

    def _write_file(self, record: RunRecord) -> None:
        if "/" in record.id or "\\" in record.id or record.id.startswith("."):
            raise RecordError(f"field 'id' must be usable as a file name, got {record.id!r}")
        self.path.mkdir(parents=True, exist_ok=True)
        text = json.dumps([record.to_dict()], indent=1, allow_nan=False) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{record.id}.", suffix=".partial")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
            os.replace(tmp, self.path / _record_file_name(record))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write(self, record: RunRecord) -> None:
        """Store one run atomically (temporary file, then rename). Raises RecordError if
        the record is malformed or its id is already stored."""
        if self.read_only:
            raise PermissionError(f"{self} is read-only")
        try:
            record = record_from_dict(asdict(record))
        except RecordError as e:
            raise RecordError(f"run {record.id!r}: {e}") from None
        if any(self._files(f"*-{glob.escape(record.id)}.json")):
            raise RecordError(f"run {record.id!r} is already stored in {self}")
        self._write_file(record)

    def import_records(self, records: list[RunRecord]) -> tuple[int, int]:
        present = {r.id for r in records if any(self._files(f"*-{glob.escape(r.id)}.json"))}
        for r in records:
            if r.id not in present:
                self._write_file(r)
        return len(records) - len(present), len(present)

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

    def all_records(self) -> list[RunRecord]:
        return read_records(self.path).records if self.path.is_dir() else []

    def runs(self, *, status: Status | str | None = None, scenario: str | None = None, model: str | None = None,
             technique: str | None = None, sweep_id: str | None = None, tag: str | None = None,
             limit: int | None = None) -> list[RunRecord]:
        """Stored runs matching every given filter, newest first."""
        out = [r for r in self.all_records() if record_matches(r, status=status, scenario=scenario, model=model,
                                                                technique=technique, sweep_id=sweep_id, tag=tag)]
        return out[:limit] if limit is not None else out

    def find_completed(self, config_hash: str) -> str | None:
        """Id of the newest `ok` run of this config hash, so a resumed sweep can skip it."""
        done = [r for p in self._files(f"{glob.escape(config_hash[:_HASH_CHARS])}-*.json") for r in load_record_file(p)
                if r.config_hash == config_hash and r.status is Status.OK]
        return max(done, key=lambda r: (r.created_at, r.id)).id if done else None

    @property
    def query(self):
        from effbench.store.frame_queries import FrameQueries

        return FrameQueries(self.all_records())

    def export(self, path: str | os.PathLike[str], fmt: str | None = None) -> int:
        from effbench.store.export import export_records

        return export_records(self.all_records(), path, fmt)
