"""The gate file: which metrics are gated, with what tolerance, and the test's settings.

    # effbench gate file
    alpha: 0.05          # one-sided significance of each check
    min_samples: 5       # fewer repeats on either side: inconclusive
    method: mannwhitney  # or bootstrap
    match: names         # pair runs by model × technique × scenario (or: config; or: ab)
    pool: repeats        # samples = the newest run's repeats (or: runs, one median per run)
    process_test: t      # match: ab — t-test on log ratios (or: permutation)
    power: 0.95          # match: ab — the power behind "this runner resolves ≥ X% changes"
    metrics:
      latency.tpot_s: +5%              # may grow by up to 5%
      throughput.decode_tokens_per_s: -5%
      memory.peak_bytes: +2%
      quality.perplexity: +1%
      latency.ttft_s: {tolerance: 10%, min_samples: 8}

A tolerance is how much worse the candidate may be. Its direction comes from the
metric's `higher_is_better` (effbench.metrics.catalog); a sign, if written, must
agree with it (+ for lower-is-better, − for higher-is-better), so a typo such
as `throughput.decode_tokens_per_s: +5%` is an error rather than a silent
no-op. Numbers without `%` are fractions (0.05 = 5%).

A metric name must be in the catalogue or look like an lm-eval score
(`quality.<task>.<metric>`): a typo such as `latency.tpot` is an error naming
the nearest known names, never a gate that silently checks nothing.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from effbench.gate.options import MATCH_MODES, METHODS, POOL_MODES, PROCESS_TESTS
from effbench.metrics.catalog import CATALOG

# Scores lm-eval produces (effbench.quality.lm_eval_runner): quality.<task>.<metric>.
LM_EVAL_METRIC = re.compile(r"^quality\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+$")

# Defaults measured by benchmarks/gate_power.py (docs/results/gate_power.md).
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_SAMPLES = 5
DEFAULT_METHOD = "mannwhitney"
DEFAULT_MATCH = "names"
DEFAULT_POOL = "repeats"
DEFAULT_PROCESS_TEST = "t"
DEFAULT_POWER = 0.95
DEFAULT_TOLERANCES = {
    "latency.tpot_s": 0.05,
    "latency.ttft_s": 0.10,
    "latency.e2e_s": 0.05,
    "latency.step_s": 0.05,
    "throughput.decode_tokens_per_s": 0.05,
    "throughput.train_tokens_per_s": 0.05,
    "memory.peak_bytes": 0.02,
    "compression.size_bytes": 0.01,
    "quality.perplexity": 0.01,
}


class GateConfigError(ValueError):
    """A gate file (or option) that cannot be used; the CLI exits with code 2."""


@dataclass(frozen=True)
class MetricRule:
    name: str
    tolerance: float  # fraction the candidate may be worse
    higher_is_better: bool | None  # None: take the direction stored with the metric
    min_samples: int | None = None  # None: the gate's
    alpha: float | None = None


@dataclass(frozen=True)
class GateConfig:
    rules: tuple[MetricRule, ...]
    alpha: float = DEFAULT_ALPHA
    min_samples: int = DEFAULT_MIN_SAMPLES
    method: str = DEFAULT_METHOD
    match: str = DEFAULT_MATCH
    pool: str = DEFAULT_POOL
    process_test: str = DEFAULT_PROCESS_TEST
    power: float = DEFAULT_POWER
    n_resamples: int = 4000
    seed: int = 0
    source: str = "built-in defaults"
    extra: dict[str, Any] = field(default_factory=dict)

    def with_options(self, **options: Any) -> GateConfig:
        """Command-line options override the file; None leaves a setting alone."""
        given = {k: v for k, v in options.items() if v is not None}
        cfg = replace(self, **given)
        _check_settings(cfg)
        return cfg


_PERCENT = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d+)?|\.\d+)\s*(%?)\s*$")


def parse_tolerance(metric: str, spec: Any, higher_is_better: bool | None) -> float:
    """'+5%' / '5%' / '-5%' / 0.05 → 0.05, checking a written sign against the direction."""
    sign = ""
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
        raise GateConfigError(f"{metric}: tolerance must look like +5% or 0.05, got {spec!r}")
    if isinstance(spec, str):
        m = _PERCENT.match(spec)
        if not m:
            raise GateConfigError(f"{metric}: tolerance must look like +5%, -5% or 0.05, got {spec!r}")
        sign, number, percent = m.groups()
        value = float(number) / (100 if percent else 1)
    else:
        value = float(spec)
        if value < 0:
            sign, value = "-", -value
        number, percent = f"{value:g}", ""
    if sign and higher_is_better is not None:
        expected = "-" if higher_is_better else "+"
        if sign != expected:
            kind, worse = ("higher", "a decrease") if higher_is_better else ("lower", "an increase")
            raise GateConfigError(
                f"{metric}: is {kind}-is-better, so a regression is {worse}; write {expected}{number}{percent} "
                f"or leave the sign out (got {spec!r})")
    if value >= 1 and higher_is_better:
        raise GateConfigError(f"{metric}: a tolerance of {value:.0%} on a higher-is-better metric allows it to "
                              "reach zero; use less than 100%")
    return value


def _direction(metric: str) -> bool | None:
    spec = CATALOG.get(metric)
    return spec.higher_is_better if spec else None


def check_metric_name(metric: str) -> None:
    """A name the catalogue knows or an lm-eval score; else the nearest known names."""
    if metric in CATALOG or LM_EVAL_METRIC.match(metric):
        return
    near = difflib.get_close_matches(metric, list(CATALOG), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}?" if near else \
        f"known families: {', '.join(sorted({n.split('.')[0] + '.*' for n in CATALOG}))}"
    raise GateConfigError(f"{metric}: unknown metric ({hint}); names come from effbench.metrics.catalog, "
                          "or quality.<task>.<metric> for lm-eval scores")


def _rule(metric: str, spec: Any) -> MetricRule:
    check_metric_name(metric)
    if metric in CATALOG and CATALOG[metric].higher_is_better is None:
        raise GateConfigError(f"{metric}: has no direction (higher_is_better is unset in the catalogue): "
                              "it describes the setup, it cannot regress")
    direction = _direction(metric)
    if isinstance(spec, dict):
        unknown = set(spec) - {"tolerance", "min_samples", "alpha", "higher_is_better"}
        if unknown:
            raise GateConfigError(f"{metric}: unknown key(s) {', '.join(sorted(unknown))}; "
                                  "known: tolerance, min_samples, alpha, higher_is_better")
        if "tolerance" not in spec:
            raise GateConfigError(f"{metric}: needs a tolerance, e.g. {{tolerance: 5%}}")
        if "higher_is_better" in spec:
            if not isinstance(spec["higher_is_better"], bool):
                raise GateConfigError(f"{metric}: higher_is_better must be true or false")
            direction = spec["higher_is_better"]
        rule = MetricRule(metric, parse_tolerance(metric, spec["tolerance"], direction), direction,
                          spec.get("min_samples"), spec.get("alpha"))
    else:
        rule = MetricRule(metric, parse_tolerance(metric, spec, direction), direction)
    if rule.min_samples is not None and (not isinstance(rule.min_samples, int) or rule.min_samples < 1):
        raise GateConfigError(f"{metric}: min_samples must be a whole number ≥ 1")
    if rule.alpha is not None and not (isinstance(rule.alpha, (int, float)) and 0 < rule.alpha < 1):
        raise GateConfigError(f"{metric}: alpha must be between 0 and 1")
    return rule


def _check_settings(cfg: GateConfig) -> None:
    if not 0 < cfg.alpha < 1:
        raise GateConfigError(f"alpha must be between 0 and 1, got {cfg.alpha}")
    if not isinstance(cfg.min_samples, int) or cfg.min_samples < 1:
        raise GateConfigError(f"min_samples must be a whole number ≥ 1, got {cfg.min_samples!r}")
    if cfg.method not in METHODS:
        raise GateConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    if cfg.match not in MATCH_MODES:
        raise GateConfigError(f"match must be one of {', '.join(MATCH_MODES)}, got {cfg.match!r}")
    if cfg.pool not in POOL_MODES:
        raise GateConfigError(f"pool must be one of {', '.join(POOL_MODES)}, got {cfg.pool!r}")
    if cfg.process_test not in PROCESS_TESTS:
        raise GateConfigError(f"process_test must be one of {', '.join(PROCESS_TESTS)}, got {cfg.process_test!r}")
    if not 0.5 <= cfg.power < 1:
        raise GateConfigError(f"power must be in [0.5, 1), got {cfg.power}")
    if not cfg.rules:
        raise GateConfigError("the gate has no metrics: list some under `metrics:`")


def default_gate() -> GateConfig:
    return GateConfig(tuple(MetricRule(n, t, _direction(n)) for n, t in DEFAULT_TOLERANCES.items()))


def gate_from_dict(data: Any, source: str = "<dict>") -> GateConfig:
    if not isinstance(data, dict):
        raise GateConfigError(f"{source}: expected a mapping with a `metrics:` section, got {type(data).__name__}")
    settings_keys = ("alpha", "min_samples", "method", "match", "pool", "process_test", "power", "n_resamples", "seed")
    known = {*settings_keys, "metrics"}
    unknown = set(data) - known
    if unknown:
        raise GateConfigError(f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                              f"known: {', '.join(sorted(known))}")
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise GateConfigError(f"{source}: `metrics:` must map metric names to tolerances, e.g. latency.tpot_s: +5%")
    try:
        rules = tuple(_rule(str(name), spec) for name, spec in metrics.items())
    except GateConfigError as e:
        raise GateConfigError(f"{source}: metrics.{e}") from None
    settings = {k: data[k] for k in settings_keys if k in data}
    cfg = GateConfig(rules, source=source, **settings)
    try:
        _check_settings(cfg)
    except GateConfigError as e:
        raise GateConfigError(f"{source}: {e}") from None
    return cfg


def load_gate(path: str | Path | None) -> GateConfig:
    """The gate file at `path`, or the built-in defaults when None."""
    if path is None:
        return default_gate()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise GateConfigError(f"cannot read gate file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise GateConfigError(f"gate file {path} is not valid YAML: {e}") from None
    return gate_from_dict(data, str(path))
