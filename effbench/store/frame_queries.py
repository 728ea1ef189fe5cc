"""The leaderboard's reads over records held in memory (a `json://` store):
the same answers as effbench.store.sql_queries, computed with pandas."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from datetime import date

import pandas as pd

from effbench.metrics.record import RunRecord
from effbench.store.base import METRIC_COLUMNS, RUN_COLUMNS, Filters


def _like(pattern: str) -> str:
    """SQL LIKE → shell pattern (% any run, _ one character)."""
    return pattern.replace("*", "[*]").replace("?", "[?]").replace("%", "*").replace("_", "?")


class FrameQueries:
    def __init__(self, records: list[RunRecord]) -> None:
        self.records = records  # newest first
        self.by_id = {r.id: r for r in records}

    @staticmethod
    def _run_values(r: RunRecord) -> tuple:
        return (r.id, r.created_at, r.status.value, r.axis, r.scenario, r.model, r.technique,
                (r.hardware or {}).get("label"))

    def _match(self, r: RunRecord, f: Filters) -> bool:
        values = dict(zip(RUN_COLUMNS, self._run_values(r)))
        for key in ("axis", "scenario", "model", "technique", "hardware", "status"):
            wanted = getattr(f, key)
            if wanted and values[key] not in wanted:
                return False
        day = r.created_at[:10]
        return ((not f.tag or any(t in r.tags for t in f.tag))
                and (f.since is None or day >= f.since.isoformat())
                and (f.until is None or day <= f.until.isoformat())
                and (not f.search or f.search in r.model or f.search in r.technique or r.id.startswith(f.search)))

    def _runs(self, f: Filters) -> list[RunRecord]:
        return [r for r in self.records if self._match(r, f)]

    def version(self) -> tuple[int, str | None]:
        return len(self.records), max((r.created_at for r in self.records), default=None)

    def count_runs(self, f: Filters = Filters()) -> int:
        return len(self._runs(f))

    def facets(self) -> dict[str, list]:
        frame = pd.DataFrame([self._run_values(r) for r in self.records], columns=list(RUN_COLUMNS))
        out = {k: sorted(v for v in frame[k].dropna().unique()) for k in
               ("axis", "scenario", "model", "technique", "hardware", "status")}
        out["tag"] = sorted({t for r in self.records for t in r.tags})
        out["metric"] = sorted({m.name for r in self.records for m in r.metrics})
        days = sorted(r.created_at[:10] for r in self.records)
        out["dates"] = [date.fromisoformat(d) for d in (days[:1] + days[-1:])] if days else []
        return out

    def run_page(self, f: Filters, sort: str | None = None, descending: bool = True, offset: int = 0,
                 limit: int = 100) -> pd.DataFrame:
        runs = self._runs(f)
        if sort is not None:
            value = {r.id: next((m.value for m in r.metrics if m.name == sort), None) for r in runs}
            have = sorted((r for r in runs if value[r.id] is not None), key=lambda r: (value[r.id], r.id),
                          reverse=descending)
            runs = have + [r for r in runs if value[r.id] is None]
        rows = [(*self._run_values(r), r.tags, r.error) for r in runs[offset : offset + limit]]
        return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "tags", "error"])

    def _metric_values(self, r: RunRecord, names: set[str], like: str | None, samples: bool) -> list[tuple]:
        out = []
        for m in r.metrics:
            if (names or like) and not (m.name in names or (like and fnmatch.fnmatchcase(m.name, _like(like)))):
                continue
            s = m.summary
            out.append((m.name, m.value, m.unit, m.source.value, m.higher_is_better, s.median, s.median_ci95_low,
                        s.median_ci95_high, s.mean, s.ci95_low, s.ci95_high, s.n, m.invalid,
                        *([m.samples] if samples else [])))
        return out

    def metric_rows(self, run_ids: Sequence[str], names: Iterable[str] = (), like: str | None = None,
                    samples: bool = False) -> pd.DataFrame:
        names = set(names)
        rows = [(rid, *values) for rid in run_ids if rid in self.by_id
                for values in self._metric_values(self.by_id[rid], names, like, samples)]
        return pd.DataFrame(rows, columns=["run_id", *METRIC_COLUMNS, *(["samples"] if samples else [])])

    def latest_ok_runs(self, f: Filters = Filters()) -> pd.DataFrame:
        seen, rows = set(), []
        for r in self._runs(f):
            key = (r.axis, r.scenario, r.model, r.technique, r.config_hash, (r.hardware or {}).get("label"))
            if r.status.value != "ok" or key in seen:
                continue
            seen.add(key)
            params = next((m.value for m in r.metrics if m.name == "model.parameters"), None)
            rows.append((*self._run_values(r), r.config, params))
        return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "config", "parameters"])
