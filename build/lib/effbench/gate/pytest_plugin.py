"""Gate inside your own test suite: the `effbench_gate` fixture.

Enable it in your conftest.py:

    pytest_plugins = ["effbench.gate.pytest_plugin"]

then, in a test:

    def test_decode_does_not_regress(effbench_gate):
        # stored runs: same selectors and gate file as `effbench gate`
        effbench_gate.runs(candidate="tag:candidate", baseline="branch:main", gate="effbench-gate.yaml")

    def test_my_kernel_is_not_slower(effbench_gate):
        # or your own repeat samples, e.g. timings of two implementations
        effbench_gate.samples("latency.step_s", baseline=old_times, candidate=new_times, tolerance="5%")

A regression fails the test with the gate's table; inconclusive checks only
warn unless `--effbench-strict` (or strict=True) is given. The store is
`--effbench-db URL`, else $EFFBENCH_DB_URL, else results/effbench.db.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytest

from effbench.gate.config import GateConfig, gate_from_dict, load_gate, parse_tolerance
from effbench.gate.core import GateResult, run_gate
from effbench.gate.render import to_markdown
from effbench.gate.stats import Comparison, Verdict, compare_samples
from effbench.metrics.catalog import CATALOG


class EffbenchGateWarning(UserWarning):
    """An inconclusive gate check (too few samples, estimate vs measurement, unconfirmed change)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("effbench", "effbench regression gate")
    group.addoption("--effbench-db", metavar="URL", default=None,
                    help="results store for effbench_gate.runs (default: $EFFBENCH_DB_URL or results/effbench.db)")
    group.addoption("--effbench-strict", action="store_true", default=False,
                    help="inconclusive effbench_gate checks fail the test")


class Gatekeeper:
    def __init__(self, db: str | None = None, strict: bool = False) -> None:
        self.db = db
        self.strict = strict

    def runs(self, candidate: str | list, baseline: str | list, gate: str | dict | GateConfig | None = None,
             *, strict: bool | None = None, **options: Any) -> GateResult:
        """`effbench gate` over stored runs (selectors, or lists of RunRecords); fails on regression."""
        from effbench.store import open_store

        strict = self.strict if strict is None else strict
        if isinstance(gate, GateConfig):
            cfg = gate
        elif isinstance(gate, dict):
            cfg = gate_from_dict(gate, "<effbench_gate>")
        else:
            cfg = load_gate(gate)
        cfg = cfg.with_options(**options)
        result = run_gate(candidate, baseline, cfg, lambda: open_store(self.db, read_only=True))
        if result.exit_code(strict):
            pytest.fail(to_markdown(result, strict), pytrace=False)
        for c in result.inconclusive:
            warnings.warn(f"{c.pair} {c.metric}: inconclusive: {c.detail}", EffbenchGateWarning, stacklevel=2)
        return result

    def samples(self, metric: str, baseline: Sequence[float], candidate: Sequence[float],
                tolerance: str | float = "5%", *, higher_is_better: bool | None = None,
                strict: bool | None = None, **options: Any) -> Comparison:
        """The gate's test on two sample sets; fails the test on a regression."""
        strict = self.strict if strict is None else strict
        if higher_is_better is None:
            spec = CATALOG.get(metric)
            if spec is None or spec.higher_is_better is None:
                raise ValueError(f"{metric}: pass higher_is_better= (no direction in the catalogue)")
            higher_is_better = spec.higher_is_better
        tol = parse_tolerance(metric, tolerance, higher_is_better)
        comp = compare_samples(baseline, candidate, tolerance=tol, higher_is_better=higher_is_better, **options)
        message = f"{metric}: {comp.verdict.value}, candidate/baseline median ratio {comp.ratio:.3f}: {comp.reason}"
        if comp.verdict is Verdict.REGRESSION or (strict and comp.verdict is Verdict.INCONCLUSIVE):
            pytest.fail(message, pytrace=False)
        if comp.verdict is Verdict.INCONCLUSIVE:
            warnings.warn(message, EffbenchGateWarning, stacklevel=2)
        return comp


@pytest.fixture
def effbench_gate(request: pytest.FixtureRequest) -> Gatekeeper:
    """Regression checks that fail the test: `.runs(candidate=..., baseline=...)` over
    stored runs, `.samples(metric, baseline=[...], candidate=[...])` over your own."""
    return Gatekeeper(request.config.getoption("--effbench-db", None),
                      bool(request.config.getoption("--effbench-strict", False)))
