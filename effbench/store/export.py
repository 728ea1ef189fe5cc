"""Exports every store writes the same way: JSON (full records, importable) or
CSV / Parquet (the metrics frame: one row per run × metric)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from effbench.store.base import StoreError

if TYPE_CHECKING:
    import pandas as pd

    from effbench.metrics.record import RunRecord

FORMATS = ("json", "csv", "parquet")
RUN_FRAME_COLUMNS = ("id", "created_at", "status", "scenario", "model", "technique", "sweep_id")
METRIC_FRAME_COLUMNS = ("name", "value", "unit", "source", "higher_is_better", "median", "mean", "p90", "p99", "std",
                        "ci95_low", "ci95_high", "n")
FRAME_DTYPES = {
    **{c: "float64" for c in ("value", "median", "mean", "p90", "p99", "std", "ci95_low", "ci95_high")},
    "n": "int64",
    "higher_is_better": "boolean",
}


def export_format(path: str | os.PathLike[str], fmt: str | None) -> str:
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise StoreError(f"cannot export to {str(path)!r}: the format must be one of {', '.join(FORMATS)} "
                         "(from the file extension, or --format)")
    return fmt


def typed_frame(rows: list) -> pd.DataFrame:
    """The metrics frame from row tuples (RUN_FRAME_COLUMNS + METRIC_FRAME_COLUMNS), typed."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=[*RUN_FRAME_COLUMNS, *METRIC_FRAME_COLUMNS]).astype(FRAME_DTYPES)
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601")
    return frame


def metrics_frame(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        for m in r.metrics:
            s = asdict(m.summary)
            rows.append((*(getattr(r, c) if c != "status" else r.status.value for c in RUN_FRAME_COLUMNS),
                         m.name, m.value, m.unit, m.source.value, m.higher_is_better,
                         *(s[c] for c in METRIC_FRAME_COLUMNS[5:])))
    return typed_frame(rows)


def write_export(path: str | os.PathLike[str], fmt: str, records: list[RunRecord] | None = None,
                 frame: pd.DataFrame | None = None) -> int:
    """json: `records`; csv/parquet: `frame` (or the frame of `records`). Returns records or rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps([r.to_dict() for r in records], indent=2, allow_nan=False) + "\n")
        return len(records)
    frame = metrics_frame(records) if frame is None else frame
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return len(frame)


def export_records(records: list[RunRecord], path: str | os.PathLike[str], fmt: str | None = None) -> int:
    return write_export(path, export_format(path, fmt), records)


WIDE_METRIC_FIELDS = ("low", "high", "n", "source", "invalid")


def wide_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: its fields, engine and workload, `config.*` and `hardware.*` flattened,
    and per metric its value (column `<name>`), the median's 95% interval (`<name>:low`,
    `<name>:high`; empty below 6 samples), `<name>:n`, `<name>:source` and `<name>:invalid`."""
    import pandas as pd

    from effbench import compare

    rows = []
    for r in records:
        row = {"id": r.id, "created_at": r.created_at, "status": r.status.value, "axis": r.axis, "scenario": r.scenario,
               "model": r.model, "technique": r.technique, "hardware": (r.hardware or {}).get("label"),
               "engine": compare.engine(r.config), "sweep_id": r.sweep_id, "tags": ";".join(r.tags),
               "duration_s": r.duration_s, "error": (r.error or "").strip().split("\n")[0] or None}
        row.update({f"config.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v
                    for k, v in compare.flatten(r.config).items()})
        row.update({f"hardware.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v
                    for k, v in compare.flatten(r.hardware or {}).items()})
        for m in r.metrics:
            s = m.summary
            row.update({m.name: m.value, f"{m.name}:low": s.median_ci95_low, f"{m.name}:high": s.median_ci95_high,
                        f"{m.name}:n": s.n, f"{m.name}:source": m.source.value, f"{m.name}:invalid": m.invalid})
        rows.append(row)
    frame = pd.DataFrame(rows)
    # Run fields, then config, hardware, then the metrics in catalogue order.
    names = compare.in_catalogue_order({m.name for r in records for m in r.metrics})
    fixed = [c for c in frame.columns if not c.startswith(("config.", "hardware.")) and ":" not in c
             and c not in names]
    ordered = [*fixed, *sorted(c for c in frame.columns if c.startswith("config.")),
               *sorted(c for c in frame.columns if c.startswith("hardware.")),
               *(c for n in names for c in (n, *(f"{n}:{f}" for f in WIDE_METRIC_FIELDS)))]
    frame = frame.reindex(columns=ordered)
    # A key that is a number in one config and text in another: Parquet wants one type per column.
    for c in frame.columns[frame.dtypes.map(pd.api.types.is_object_dtype)]:
        if len({type(v) for v in frame[c].dropna()}) > 1:
            frame[c] = frame[c].map(lambda v: v if v is None or v != v else str(v))
    return frame


def write_wide(records: list[RunRecord], path: str | os.PathLike[str], fmt: str) -> int:
    """`wide_frame` of the records to csv or parquet; returns the runs written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = wide_frame(records)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return len(frame)
