"""The shared rules (effbench.compare): what a workload is, the interval of the figure shown,
practical significance, verdicts, sanity flags, run comparisons, and the gate's pairing within
one workload — on hand-made figures whose answers are known."""

from __future__ import annotations

import json

import pytest
from factories import make_record

from effbench import compare
from effbench.compare import Verdict
from effbench.gate.core import pair_runs
from effbench.metrics.catalog import CATALOG, PRACTICAL_BY_FAMILY, RUNTIME_DOMINATED_SHARE, make_metric
from effbench.metrics.record import Source

INFERENCE = {"scenario": {"name": "inference", "batch_size": 1, "prompt_tokens": 128, "output_tokens": 64,
                          "repeats": 5, "warmup": 1, "warmup_max": 8},
             "data": {"source": "pydoc", "path": None}, "quality": {"tasks": [], "limit": None},
             "backend": {"kind": "hf"}, "technique": {"name": "fp32"}, "seed": 0}


def config(**scenario) -> dict:
    return {**INFERENCE, "scenario": {**INFERENCE["scenario"], **scenario}}


# ------------------------------------------------------------------------------ workload


def test_the_workload_is_the_work_not_the_protocol():
    base = compare.workload(INFERENCE)
    assert base["scenario.prompt_tokens"] == 128 and base["backend.kind"] == "hf" and base["data.source"] == "pydoc"
    assert not any(k.endswith(("repeats", "warmup", "warmup_max")) for k in base)  # how, not what
    assert "technique.name" not in base and "seed" not in base  # the system under test, not the work
    assert compare.workload(config(repeats=10, warmup=3)) == base
    assert compare.workload_key(config(prompt_tokens=64)) != compare.workload_key(INFERENCE)
    # Quality tasks join the workload only when there are tasks; their order does not matter.
    tasks = {**INFERENCE, "quality": {"tasks": ["b", "a"], "num_fewshot": 0, "limit": 10}}
    assert compare.workload(tasks)["quality.tasks"] == ["a", "b"] and "quality.limit" not in base
    served = {**INFERENCE, "backend": {"kind": "openai", "server": {"command": "x"}}}
    assert compare.workload_key(served) != compare.workload_key(INFERENCE)


def test_labels_name_the_keys_swept_within_the_scenario():
    works = [("inference", compare.workload(config(batch_size=b))) for b in (1, 8)]
    works.append(("serve", compare.workload({"scenario": {"name": "serve", "rate": 4.0}})))
    assert compare.label_workloads(works) == ["inference (batch_size=1)", "inference (batch_size=8)", "serve"]
    a, b = compare.workload(config(prompt_tokens=128)), compare.workload(config(prompt_tokens=64))
    assert compare.workload_diff(a, b) == "prompt_tokens 128 ≠ 64"


@pytest.mark.parametrize(("backend", "expected"), [
    ({"kind": "hf"}, "hf (in-process)"),
    ({"kind": "openai", "server": {"command": "{python} -m transformers.cli.transformers serve {model} --port {port}"}},
     "openai: transformers serve"),
    ({"kind": "openai", "server": {"command": "vllm serve {model} --port {port}"}}, "openai: vllm serve"),
    ({"kind": "openai", "url": "http://gpu-box:8000", "server": {"command": None}}, "openai: http://gpu-box:8000"),
])  # fmt: skip
def test_the_engine_is_named_from_the_backend(backend, expected):
    assert compare.engine({"backend": backend}) == expected


# ------------------------------------------------------------------------------- figures


def test_the_interval_is_that_of_the_figure_shown():
    eight = make_metric("latency.e2e_s", 4.5, Source.TIMER, samples=[1, 2, 3, 4, 5, 6, 7, 8])
    fig = compare.figure_of(eight)
    # n = 8: the distribution-free interval of the median is [x(1), x(8)] (P(Bin(8, ½) ≤ 0) = 1/256 ≤ 2.5%,
    # P(≤ 1) = 9/256 > 2.5%), from the stored summary.
    assert fig.value == 4.5 and fig.interval == (1.0, 8.0) and fig.n == 8 and not fig.exact
    mean = compare.figure_of(eight, "mean")
    assert mean.value == 4.5 and mean.interval == (eight.summary.ci95_low, eight.summary.ci95_high)
    five = compare.figure_of(make_metric("latency.e2e_s", 3.0, Source.TIMER, samples=[1, 2, 3, 4, 5]))
    assert five.interval is None and five.few_repeats  # below 6 samples: none, not an invented one
    exact = compare.figure_of(make_metric("quality.perplexity", 390.4, Source.ANALYTIC))
    assert exact.exact and exact.interval == (390.4, 390.4)
    # A value that is not the median of its samples (here the last of a curve) has no median interval.
    last = compare.figure_of(make_metric("quality.eval_loss", 2.0, Source.TIMER, samples=[5, 4, 3, 3, 2.5, 2.0]))
    assert last.interval is None


def test_every_catalogued_metric_states_a_practical_threshold():
    for spec in CATALOG.values():
        assert 0 < spec.practical <= 0.05, spec.name
    assert CATALOG["quality.perplexity"].practical == 0.01 and CATALOG["latency.e2e_s"].practical == 0.05
    assert CATALOG["memory.peak_bytes"].practical == PRACTICAL_BY_FAMILY["memory"] == 0.02
    assert CATALOG["compression.size_bytes"].practical == 0.01 and CATALOG["compute.flops"].practical == 0.01
    assert compare.threshold("quality.arc_easy.acc") == 0.01  # lm-eval scores: the default


def fig(value, low=None, high=None, n=8, **kw) -> compare.Figure:
    return compare.Figure(value, None if low is None else (low, high), n, **kw)


def test_a_difference_is_real_only_outside_both_intervals_and_beyond_the_threshold():
    rel = 0.05
    assert compare.real_difference(fig(1.0, 0.95, 1.05), fig(1.2, 1.15, 1.25), rel) is True
    # Each lies outside the other's interval although the intervals overlap: real.
    assert compare.real_difference(fig(1.0, 0.9, 1.12), fig(1.2, 1.1, 1.3), rel) is True
    # The other value inside an interval: noise.
    assert compare.real_difference(fig(1.0, 0.9, 1.25), fig(1.2, 1.15, 1.25), rel) is False
    # Tight intervals but within 5%: a tie, however significant statistically.
    assert compare.real_difference(fig(1.0, 0.999, 1.001), fig(1.04, 1.039, 1.041), rel) is False
    # Beyond 5% without an interval (n < 6): cannot tell.
    assert compare.real_difference(fig(1.0, n=3), fig(1.5, 1.4, 1.6), rel) is None
    # Exact figures (analytic): the threshold alone decides.
    ppl = [fig(v, v, v, n=1, exact=True) for v in (390.4, 390.5, 460.7)]
    assert compare.real_difference(ppl[0], ppl[1], 0.01) is False  # 0.03%: a tie
    assert compare.real_difference(ppl[0], ppl[2], 0.01) is True  # 18%


def test_verdicts():
    base = fig(10.0, 10.0, 10.0, n=1, exact=True)
    assert compare.judge(base, fig(5.0, 5.0, 5.0, n=1, exact=True), 0.01, False) is Verdict.BETTER
    assert compare.judge(base, fig(20.0, 20.0, 20.0, n=1, exact=True), 0.01, False) is Verdict.WORSE
    assert compare.judge(base, fig(20.0, 20.0, 20.0, n=1, exact=True), 0.01, None) is Verdict.DIFFERS
    assert compare.judge(base, fig(10.05, 10.05, 10.05, n=1, exact=True), 0.01, False) is Verdict.TIE
    assert compare.judge(fig(1.0, n=3), fig(2.0, n=3), 0.05, False) is Verdict.UNDECIDED
    assert compare.judge(fig(1.0, n=3), fig(1.01, n=3), 0.05, False) is Verdict.TIE  # within 5%: no repeats needed
    assert compare.judge(base, fig(5.0, 5.0, 5.0, n=1, exact=True, invalid="MFU = 5"), 0.01, True) is Verdict.INVALID
    assert compare.judge(fig(1.0, 0.9, 1.1), fig(2.0, 1.9, 2.1, estimated=True), 0.05, False) \
        is Verdict.NOT_COMPARABLE
    # Other hardware: measured figures are not comparable, exact ones are.
    assert compare.judge(fig(1.0, 0.9, 1.1), fig(2.0, 1.9, 2.1), 0.05, False, same_hardware=False) \
        is Verdict.NOT_COMPARABLE
    assert compare.judge(base, fig(5.0, 5.0, 5.0, n=1, exact=True), 0.01, False, same_hardware=False) \
        is Verdict.BETTER


# --------------------------------------------------------------------------- sanity flags


def test_sanity_flags_mark_the_figures_they_concern():
    metrics = {m.name: m for m in [
        make_metric("compute.flops", 6.71e6, Source.ANALYTIC), make_metric("compute.flops_analytic", 81.8e6,
                                                                           Source.ANALYTIC),
        make_metric("compute.mfu", 0.0006, Source.TIMER), make_metric("compute.achieved_flops_per_s", 3e6,
                                                                      Source.TIMER),
        make_metric("memory.peak_bytes", 610 * 2**20, Source.SAMPLED), make_metric("memory.amu", 0.03, Source.SAMPLED),
        make_metric("memory.runtime_share", 0.97, Source.SAMPLED),
        make_metric("energy.joules", 3.0, Source.ESTIMATED), make_metric("compute.pcu", 5.0, Source.TIMER),
        make_metric("quality.perplexity", 30.0, Source.ANALYTIC),
    ]}  # fmt: skip
    found = {name: {f.code for f in fl} for name, fl in compare.flags(metrics).items()}
    assert found == {"compute.flops": {"flops-low"}, "compute.mfu": {"flops-low"},
                     "compute.achieved_flops_per_s": {"flops-low"}, "memory.peak_bytes": {"runtime-memory"},
                     "memory.amu": {"runtime-memory"}, "energy.joules": {"estimated"}, "compute.pcu": {"invalid"}}
    text = compare.flags(metrics)["compute.flops"][0].text
    assert "8% of the analytic count" in text  # 6.71 / 81.8
    assert compare.flags(metrics)["compute.pcu"][0].doc == "docs/metrics.md#impossible-figures"
    # At the rule's edges: half the analytic count and the runtime share limit are not flagged.
    edge = {"compute.flops": make_metric("compute.flops", 50.0, Source.ANALYTIC),
            "compute.flops_analytic": make_metric("compute.flops_analytic", 100.0, Source.ANALYTIC),
            "memory.runtime_share": make_metric("memory.runtime_share", RUNTIME_DOMINATED_SHARE, Source.SAMPLED),
            "memory.peak_bytes": make_metric("memory.peak_bytes", 1e8, Source.SAMPLED)}
    assert compare.flags(edge) == {}


# ---------------------------------------------------------------------------- comparisons


def run(technique: str, cfg: dict, *metrics, hardware: str = "cpu", scenario: str = "inference"):
    return make_record(technique=technique, config=cfg, scenario=scenario, hardware={"label": hardware},
                       metrics=list(metrics))


def test_compare_runs_judges_only_within_one_workload():
    size = {"fp32": 78.2e6, "bf16": 39.1e6, "b8": 39.1e6}
    ppl = {"fp32": 460.7, "bf16": 460.9, "b8": 460.9}
    runs = [run(t, config(batch_size=8 if t == "b8" else 1), make_metric("compression.size_bytes", size[t],
                                                                         Source.ANALYTIC),
                make_metric("quality.perplexity", ppl[t], Source.ANALYTIC),
                make_metric("latency.e2e_s", 1.0, Source.TIMER, samples=[1.0, 1.1, 0.9]))
            for t in ("fp32", "bf16", "b8")]
    result = compare.compare_runs(runs)
    assert result.labels[0].startswith("tiny-llama × fp32 · inference (batch_size=1) · ")
    assert result.comparable == [True, True, False]
    assert any("workload differs: batch_size 1 ≠ 8" in n for n in result.notes)
    size_row, ppl_row = result.rows["compression.size_bytes"], result.rows["quality.perplexity"]
    assert size_row[1].verdict is Verdict.BETTER and size_row[1].change == "−37.3 MiB · ×0.5"
    assert ppl_row[1].verdict is Verdict.TIE  # 0.04%: within perplexity's 1%
    assert size_row[2].verdict is Verdict.NOT_COMPARABLE and size_row[2].change == ""
    assert result.rows["latency.e2e_s"][1].verdict is Verdict.TIE  # equal medians


# ------------------------------------------------------------------------- the gate's pairs


def test_the_gate_pairs_only_within_one_workload():
    def side(prompt, tag):
        return [make_record(technique=t, config=config(prompt_tokens=prompt), config_hash=f"{t}{prompt}",
                            tags=[tag]) for t in ("fp32", "bf16")]

    same = pair_runs(side(128, "main"), side(128, "pr"), "names")
    assert len(same) == 2 and all(p.baseline and p.candidate for p in same)
    # The candidate changed the prompt length: its runs measure other work, so nothing pairs.
    moved = pair_runs(side(128, "main"), side(64, "pr"), "names")
    assert len(moved) == 4 and all(p.baseline is None or p.candidate is None for p in moved)
    assert {json.loads(p.label.split("scenario.prompt_tokens=")[1].rstrip("]")) for p in moved} == {64, 128}


def test_list_as_markdown_has_the_tables_cells_and_units():
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.record import Source
    from effbench.report import list_markdown

    runs = [make_record(technique=t, metrics=[make_metric("latency.e2e_s", v, Source.TIMER, [v] * 3)])
            for t, v in (("fp32", 0.5), ("bf16", 0.25))]
    lines = list_markdown(runs, ["technique", "AL"]).splitlines()
    assert lines[0] == "| technique | AL (ms) |" and lines[1] == "|---|---:|"
    assert lines[2:] == ["| fp32 | 500 |", "| bf16 | 250 |"]
