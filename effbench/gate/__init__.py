"""`effbench gate`: a noise-aware performance regression gate for CI.

Compares a candidate's runs with a baseline's pair by pair and metric by
metric, with the repeat samples (not single values), and says for each check
pass / regression / improvement / inconclusive. See effbench.gate.stats for the
statistics, effbench.gate.core for selectors and pairing, effbench.gate.config
for the gate file. `effbench ab` (effbench.gate.ab) measures two sides in
interleaved fresh processes; effbench.gate.process_stats and process_gate gate
them one median per process, with planned looks and power-aware verdicts.
"""

import importlib

# name -> submodule; imported on first use (PEP 562), so `effbench --help` and the
# commands that only build their parsers never import scipy.
_EXPORTS = {
    **dict.fromkeys(("GateConfig", "GateConfigError", "MetricRule", "default_gate", "gate_from_dict", "load_gate"),
                    "config"),
    **dict.fromkeys(("CheckResult", "GateResult", "GateUsageError", "Selector", "evaluate", "pair_runs",
                     "parse_selector", "run_gate", "select_runs"), "core"),
    **dict.fromkeys(("Comparison", "Verdict", "compare_samples", "compare_values"), "stats"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'effbench.gate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"effbench.gate.{_EXPORTS[name]}"), name)
