"""Turn an untrusted dict (an imported JSON record) into a RunRecord, or say which field is wrong.

The same checks guard `ResultStore.write`, so anything stored can be exported
as portable JSON and read back by either backend: numbers must be finite
(JSON has no NaN/inf), strings free of NUL (PostgreSQL text refuses it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, astuple, fields
from datetime import datetime, timedelta
from typing import Any

from effbench.metrics.record import Metric, RunRecord, Source, Status, Summary


class RecordError(ValueError):
    """A run record that cannot be stored as given; the message names the field."""


Check = Callable[[Any, str], Any]


def _fail(path: str, expected: str, got: Any) -> None:
    raise RecordError(f"field '{path}' must be {expected}, got {got!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        _fail(path, "a string", v)
    if "\x00" in v:
        _fail(path, "free of NUL characters", v)
    return v


def _nonempty_str(v: Any, path: str) -> str:
    if not _str(v, path):
        _fail(path, "a non-empty string", v)
    return v


def _number(v: Any, path: str) -> float:
    # bool is an int subclass; True as a latency is a bug, not a number.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(path, "a number", v)
    if not math.isfinite(v):
        _fail(path, "a finite number", v)
    return float(v)


def _nonnegative(v: Any, path: str) -> float:
    if _number(v, path) < 0:
        _fail(path, "a number >= 0", v)
    return float(v)


def _seed(v: Any, path: str) -> int:
    # The column is a signed 64-bit integer on both backends.
    if isinstance(v, bool) or not isinstance(v, int) or not -(2**63) <= v < 2**63:
        _fail(path, "a 64-bit integer", v)
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        _fail(path, "true or false", v)
    return v


def _optional(check: Check) -> Check:
    return lambda v, path: None if v is None else check(v, path)


def _one_of(enum: type[Status] | type[Source]) -> Check:
    allowed = [e.value for e in enum]

    def check(v: Any, path: str) -> str:
        if v not in allowed:
            _fail(path, f"one of {', '.join(allowed)}", v)
        return v

    return check


def _utc_timestamp(v: Any, path: str) -> str:
    # Stored as text and ordered as text: only UTC keeps that order chronological.
    s = _str(v, path)
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        _fail(path, "an ISO-8601 timestamp", v)
    if t.utcoffset() not in (None, timedelta(0)):
        _fail(path, "in UTC", v)
    return v


def _json(v: Any, path: str) -> Any:
    if isinstance(v, dict):
        return {_str(k, f"{path} key"): _json(x, f"{path}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json(x, f"{path}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, float):
        return _number(v, path)
    if isinstance(v, str):
        return _str(v, path)
    if v is None or isinstance(v, (bool, int)):
        return v
    _fail(path, "JSON data", v)


def _json_object(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        _fail(path, "an object", v)
    return _json(v, path)


def _list_of(check: Check) -> Check:
    def checked(v: Any, path: str) -> list[Any]:
        if not isinstance(v, list):
            _fail(path, "a list", v)
        return [check(x, f"{path}[{i}]") for i, x in enumerate(v)]

    return checked


def _fields(d: Any, path: str, checks: dict[str, Check], required: set[str]) -> dict[str, Any]:
    if not isinstance(d, dict):
        if path:
            _fail(path, "an object", d)
        raise RecordError(f"must be an object, got {d!r}")
    for key in checks:
        if key in required and key not in d:
            raise RecordError(f"field '{_join(path, key)}' is missing")
    for key in d:
        if key not in checks:
            raise RecordError(f"field '{_join(path, str(key))}' is not a known field")
    return {key: checks[key](d[key], _join(path, key)) for key in d}


_SUMMARY_FIELDS: dict[str, Check] = {
    **{f.name: _number for f in fields(Summary)},
    "median_ci95_low": _optional(_number),  # None: too few samples for the median's interval
    "median_ci95_high": _optional(_number),
    "few_samples": _bool,
}
# Records exported before these fields existed are still read (the summary is derived anyway).
_SUMMARY_REQUIRED = set(_SUMMARY_FIELDS) - {"median_ci95_low", "median_ci95_high", "few_samples"}


def _metric(d: Any, path: str) -> Metric:
    checks: dict[str, Check] = {
        "name": _nonempty_str,
        "value": _number,
        "unit": _str,
        "source": _one_of(Source),
        "samples": _list_of(_number),
        "higher_is_better": _optional(_bool),
        "note": _str,
        "invalid": _optional(_str),
        # Derived from the samples; accepted on import only if it agrees with them.
        "summary": lambda v, p: _fields(v, p, _SUMMARY_FIELDS, _SUMMARY_REQUIRED),
    }
    given = _fields(d, path, checks, {"name", "value", "unit", "source"})
    stated = given.pop("summary", None)
    metric = Metric(**given)
    summary = metric.summary
    if not all(math.isfinite(x) for x in astuple(summary) if isinstance(x, float)):
        raise RecordError(f"field '{path}.samples' overflows: its summary is not finite")
    for key, value in (stated or {}).items():
        derived = getattr(summary, key)
        if (value != derived) if value is None or derived is None or isinstance(value, bool) else \
                not math.isclose(value, derived, rel_tol=1e-9, abs_tol=1e-12):
            raise RecordError(
                f"field '{path}.summary.{key}' is {value!r} but the samples give {getattr(summary, key)!r}"
            )
    return metric


def _metrics(v: Any, path: str) -> list[Metric]:
    metrics = _list_of(_metric)(v, path)
    first: dict[str, int] = {}
    for i, m in enumerate(metrics):
        if m.name in first:
            raise RecordError(f"field '{path}[{i}].name' repeats {m.name!r} of {path}[{first[m.name]}]")
        first[m.name] = i
    return metrics


_RUN_CHECKS: dict[str, Check] = {
    "id": _nonempty_str,
    "created_at": _utc_timestamp,
    "status": _one_of(Status),
    "axis": _str,
    "scenario": _str,
    "model": _str,
    "technique": _str,
    "config": _json_object,
    "config_hash": _nonempty_str,
    "hardware": _json_object,
    "software": _json_object,
    "seed": _seed,
    "metrics": _metrics,
    "error": _optional(_str),
    "tags": _list_of(_str),
    "sweep_id": _optional(_str),
    "duration_s": _optional(_nonnegative),
    "artifact": _optional(_json_object),
    "warnings": _list_of(_str),
    "provenance": _json_object,
}
# Whatever RunRecord gives a default may be left out.
_RUN_REQUIRED = {f.name for f in fields(RunRecord) if f.default is MISSING and f.default_factory is MISSING}


def record_from_dict(d: Any) -> RunRecord:
    """Validate `d` (e.g. one element of an exported JSON list) and build its RunRecord.

    Raises RecordError naming the first bad or missing field, e.g.
    "field 'metrics[2].source' must be one of counter, ..., got 'guess'".
    """
    return RunRecord(**_fields(d, "", _RUN_CHECKS, _RUN_REQUIRED))
