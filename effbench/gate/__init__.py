"""`effbench gate`: a noise-aware performance regression gate for CI.

Compares a candidate's runs with a baseline's pair by pair and metric by
metric, with the repeat samples (not single values), and says for each check
pass / regression / improvement / inconclusive. See effbench.gate.stats for the
statistics, effbench.gate.core for selectors and pairing, effbench.gate.config
for the gate file. `effbench ab` (effbench.gate.ab) measures two sides in
interleaved fresh processes; effbench.gate.process_stats and process_gate gate
them one median per process, with planned looks and power-aware verdicts.
"""

from effbench.gate.config import GateConfig, GateConfigError, MetricRule, default_gate, gate_from_dict, load_gate
from effbench.gate.core import (
    CheckResult,
    GateResult,
    GateUsageError,
    Selector,
    evaluate,
    pair_runs,
    parse_selector,
    run_gate,
    select_runs,
)
from effbench.gate.stats import Comparison, Verdict, compare_samples, compare_values

__all__ = [
    "CheckResult", "Comparison", "GateConfig", "GateConfigError", "GateResult", "GateUsageError", "MetricRule",
    "Selector", "Verdict", "compare_samples", "compare_values", "default_gate", "evaluate", "gate_from_dict",
    "load_gate", "pair_runs", "parse_selector", "run_gate", "select_runs",
]
