"""MCR, the paper's Model Compression Rate (docs/spec.md §2):

    compression.mcr = compression ratio × quality ratio,   quality ratio = baseline ppl / ppl

Where the baseline perplexity comes from (a stored run, or measured in-process)
is the runner's business (runners/baseline.py); it arrives here with its note.
"""

from __future__ import annotations

from effbench.metrics.catalog import make_metric
from effbench.metrics.record import Metric, Source


def mcr_metrics(baseline_ppl: float | None, baseline_note: str, ratio: float, quality: list[Metric]) -> list[Metric]:
    """`baseline_ppl` None: the run is its own baseline (quality ratio 1)."""
    ppl = next(m.value for m in quality if m.name == "quality.perplexity")
    base_ppl = ppl if baseline_ppl is None else baseline_ppl
    return [make_metric("compression.mcr", ratio * base_ppl / ppl, Source.ANALYTIC,
                        note=f"compression ratio {ratio:.4g} × (baseline ppl / ppl = {base_ppl:.4g} / {ppl:.4g}); "
                             + baseline_note)]
