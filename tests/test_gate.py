"""`effbench gate`: the statistics checked against hand computation and scipy,
pairing, the gate file, and the command's exit codes and reports on stored runs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from factories import make_metric, make_record
from scipy import stats

from effbench.cli import main as effbench_main
from effbench.gate import (
    GateConfigError,
    GateUsageError,
    Verdict,
    compare_samples,
    compare_values,
    default_gate,
    evaluate,
    gate_from_dict,
    pair_runs,
    run_gate,
)
from effbench.gate.stats import bootstrap_ratio_interval, mann_whitney_greater, min_attainable_p
from effbench.metrics.record import Source
from effbench.store import open_store

# --- statistics -------------------------------------------------------------------------------------------------


def _perm_p_greater(x, y) -> float:
    """Exact one-sided permutation p-value of the Mann-Whitney U statistic, by enumeration."""
    pooled = list(x) + list(y)

    def u(xs, ys):
        return sum((a > b) + 0.5 * (a == b) for a in xs for b in ys)

    observed = u(x, y)
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(x)):
        xs = [pooled[i] for i in idx]
        ys = [pooled[i] for i in range(len(pooled)) if i not in idx]
        hits += u(xs, ys) >= observed - 1e-12
        total += 1
    return hits / total


def test_mann_whitney_p_values_by_hand_and_against_scipy():
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    # Complete separation of 5 vs 5: one arrangement of C(10, 5) = 252 is as extreme.
    assert mann_whitney_greater([6, 7, 8, 9, 10], base) == pytest.approx(1 / 252, rel=1e-12)
    assert min_attainable_p(5, 5) == 1 / 252 and min_attainable_p(3, 3) == 1 / 20
    # One inversion: U = 24 of 25; arrangements with U ≥ 24 are 2 of 252.
    assert mann_whitney_greater([4.5, 7, 8, 9, 10], base) == pytest.approx(2 / 252, rel=1e-12)
    # With ties the exact permutation distribution, checked by enumeration.
    x, y = [3, 4, 4, 5, 6], [1, 2, 3, 3, 4]
    assert mann_whitney_greater(x, y) == pytest.approx(_perm_p_greater(x, y), rel=1e-9)
    # Without ties: scipy's exact test.
    rng = np.random.default_rng(7)
    a, b = rng.normal(1.05, 0.03, 6), rng.normal(1.0, 0.03, 7)
    assert mann_whitney_greater(a, b) == pytest.approx(
        stats.mannwhitneyu(a, b, alternative="greater", method="exact").pvalue, rel=1e-12)
    assert mann_whitney_greater([2, 2, 2], [2, 2, 2]) == 1.0


def test_compare_samples_tests_against_the_baseline_shifted_by_the_tolerance():
    base = [1.00, 1.01, 0.99, 1.02, 0.98]
    slower = [x * 1.10 for x in base]  # exactly 10% slower, same spread
    c = compare_samples(base, slower, tolerance=0.05, higher_is_better=False)
    # Every candidate sample exceeds every baseline sample × 1.05: p = 1/252.
    assert c.verdict is Verdict.REGRESSION and c.p_regression == pytest.approx(1 / 252)
    assert c.ratio == pytest.approx(1.10)
    # 10% slower is within a 15% tolerance: slower × 1 vs base × 1.15 → no evidence either way.
    assert compare_samples(base, slower, tolerance=0.15, higher_is_better=False).verdict is Verdict.PASS
    # The mirror image for a higher-is-better metric (throughput 10% lower).
    thr = [100, 101, 99, 102, 98]
    c = compare_samples(thr, [x * 0.9 for x in thr], tolerance=0.05, higher_is_better=True)
    assert c.verdict is Verdict.REGRESSION and c.p_regression == pytest.approx(1 / 252)
    assert compare_samples(thr, [x * 1.1 for x in thr], tolerance=0.05,
                           higher_is_better=True).verdict is Verdict.IMPROVEMENT
    assert compare_samples(base, [x * 0.9 for x in base], tolerance=0.05,
                           higher_is_better=False).verdict is Verdict.IMPROVEMENT


def test_too_few_samples_and_unconfirmed_changes_are_inconclusive():
    c = compare_samples([1.0, 1.1], [2.0, 2.1], tolerance=0.05, higher_is_better=False)
    assert c.verdict is Verdict.INCONCLUSIVE and "too few samples" in c.reason
    # 3 vs 3 could never reach p < 0.05 (smallest p = 1/20): inconclusive even at min_samples=3.
    c = compare_samples([1, 1.1, 0.9], [2, 2.1, 1.9], tolerance=0.05, higher_is_better=False, min_samples=3)
    assert c.verdict is Verdict.INCONCLUSIVE and "can never reach" in c.reason
    # Median 20% worse but overlapping samples: not significant, beyond tolerance.
    c = compare_samples([1.0, 1.5, 0.7, 1.2, 0.8], [1.2, 0.9, 1.6, 1.1, 1.4], tolerance=0.05,
                        higher_is_better=False)
    assert c.verdict is Verdict.INCONCLUSIVE and "not significant" in c.reason


def test_bootstrap_interval_by_hand():
    # Baseline without spread: the ratio's interval is the bootstrap median of [1..5].
    # P(resampled median ≤ 1) = P(≥ 3 of 5 draws are 1) = 0.05792 > 0.05, so the 5%
    # quantile is 1; P(median ≤ 4) = 0.94208 < 0.95, so the 95% quantile is 5.
    lo, hi = bootstrap_ratio_interval([1, 2, 3, 4, 5], [1, 1, 1, 1, 1], confidence=0.90, n_resamples=20000)
    assert (lo, hi) == (1.0, 5.0)
    assert bootstrap_ratio_interval([2, 2, 2], [1, 1, 1]) == (2.0, 2.0)
    base = [1.00, 1.01, 0.99, 1.02, 0.98]
    c = compare_samples(base, [x * 1.10 for x in base], tolerance=0.05, higher_is_better=False, method="bootstrap")
    assert c.verdict is Verdict.REGRESSION and c.interval[0] > 1.05


def test_deterministic_figures_compare_by_value():
    assert compare_values(100.0, 101.5, tolerance=0.01, higher_is_better=False).verdict is Verdict.REGRESSION
    assert compare_values(100.0, 100.5, tolerance=0.01, higher_is_better=False).verdict is Verdict.PASS
    assert compare_values(2.0, 2.5, tolerance=0.01, higher_is_better=True).verdict is Verdict.IMPROVEMENT


# --- the gate file ----------------------------------------------------------------------------------------------


def test_gate_file_tolerances_and_directions():
    g = gate_from_dict({"alpha": 0.01, "metrics": {"latency.tpot_s": "+5%", "memory.peak_bytes": 0.02,
                                                   "throughput.decode_tokens_per_s": "-5%",
                                                   "quality.perplexity": {"tolerance": "1%", "min_samples": 1}}})
    rules = {r.name: r for r in g.rules}
    assert rules["latency.tpot_s"].tolerance == pytest.approx(0.05)
    assert rules["latency.tpot_s"].higher_is_better is False
    assert rules["memory.peak_bytes"].tolerance == pytest.approx(0.02)
    assert rules["throughput.decode_tokens_per_s"].higher_is_better is True
    assert rules["quality.perplexity"].min_samples == 1 and g.alpha == 0.01
    with pytest.raises(GateConfigError, match="higher-is-better, so a regression is a decrease"):
        gate_from_dict({"metrics": {"throughput.decode_tokens_per_s": "+5%"}})
    # The hint repeats the tolerance as written, sign corrected (it once said "-0.05%" for "+5%").
    with pytest.raises(GateConfigError, match=r"write -5% or leave the sign out"):
        gate_from_dict({"metrics": {"throughput.decode_tokens_per_s": "+5%"}})
    with pytest.raises(GateConfigError, match=r"write \+0.05 or leave the sign out"):
        gate_from_dict({"metrics": {"latency.tpot_s": -0.05}})
    with pytest.raises(GateConfigError, match="has no direction"):
        gate_from_dict({"metrics": {"compute.flops": "5%"}})
    with pytest.raises(GateConfigError, match="unknown key"):
        gate_from_dict({"metrics": {"latency.tpot_s": "5%"}, "alfa": 0.1})
    with pytest.raises(GateConfigError, match="tolerance must look like"):
        gate_from_dict({"metrics": {"latency.tpot_s": "five"}})


def test_a_typo_in_a_metric_name_cannot_switch_the_gate_off(db, tmp_path, capsys):
    with pytest.raises(GateConfigError, match=r"latency.tpot: unknown metric \(did you mean latency.tpot_s"):
        gate_from_dict({"metrics": {"latency.tpot": "+5%"}})
    with pytest.raises(GateConfigError, match="did you mean memory.peak_bytes"):
        gate_from_dict({"metrics": {"memory.peak_byte": "+2%"}})
    # lm-eval's scores are named by pattern: their direction comes with the stored metric.
    rule = gate_from_dict({"metrics": {"quality.arc_easy.acc_norm": "1%"}}).rules[0]
    assert rule.name == "quality.arc_easy.acc_norm" and rule.higher_is_better is None
    url, store = db
    store.write(stored_run("main", seed=1))
    store.write(stored_run("pr", seed=2))
    (tmp_path / "typo.yaml").write_text("metrics:\n  latency.tpot: +5%\n")
    assert gate(url, "--candidate", "tag:pr", "--baseline", "tag:main", "--gate", str(tmp_path / "typo.yaml")) == 2
    assert "latency.tpot_s" in capsys.readouterr().err
    # A valid name that no run recorded: nothing is checked — loud, and a failure under --strict.
    (tmp_path / "none.yaml").write_text("metrics:\n  quality.arc_easy.acc: 1%\n")
    args = ["--candidate", "tag:pr", "--baseline", "tag:main", "--gate", str(tmp_path / "none.yaml")]
    assert gate(url, *args) == 0
    out, err = capsys.readouterr()
    assert "WARNING: no check ran" in err and "NO CHECK RAN" in out
    assert gate(url, *args, "--strict") == 1


def test_false_alarms_are_controlled_over_the_whole_set_of_checks():
    """Twenty checks, nineteen with nothing to see and one at p = 0.028: alone a
    regression, among twenty (Benjamini–Hochberg: 0.028 × 20 > 0.05) not."""
    base = [1.00, 1.01, 0.99, 1.02, 0.98]
    suspicious = [0.995, 1.07, 1.04, 1.08, 1.03]
    alone = compare_samples(base, suspicious, tolerance=0.0, higher_is_better=False)
    assert alone.verdict is Verdict.REGRESSION and alone.p_regression == pytest.approx(7 / 252)

    def gate_20(candidates):
        runs = {"main": [], "pr": []}
        for i, cand in enumerate(candidates):
            for tag, samples in (("main", base), ("pr", cand)):
                runs[tag].append(make_record(model=f"m{i:02d}", tags=[tag], hardware={"label": "x"}, metrics=[
                    make_metric("latency.tpot_s", value=1.0, unit="s", higher_is_better=False, samples=samples)]))
        return run_gate(runs["pr"], runs["main"], gate_from_dict({"metrics": {"latency.tpot_s": 0.0}}))

    result = gate_20([suspicious] + [base] * 19)
    assert len(result.checks) == 20 and not result.regressions
    assert result.checks[0].comparison.p_regression == pytest.approx(7 / 252 * 20)
    assert "Benjamini–Hochberg" in result.multiplicity
    # Two clear ones (p = 1/252 each: 1/252 × 20/2 < 0.05) stay regressions among twenty.
    clear = [x * 1.1 for x in base]
    assert [c.pair[:3] for c in gate_20([clear, clear] + [base] * 18).regressions] == ["m00", "m01"]


# --- pairing ----------------------------------------------------------------------------------------------------


def test_names_pairing_follows_sweeps_and_shows_changed_defaults():
    def run(batch, extra=None):
        cfg = {"scenario": {"name": "inference", "batch_size": batch, **(extra or {})}, "seed": 0}
        return make_record(config=cfg, config_hash=json.dumps(cfg, sort_keys=True))

    base = [run(1), run(4)]
    cand = [run(1, {"new_knob": True}), run(4, {"new_knob": True})]  # a default the candidate added
    pairs = pair_runs(base, cand, "names")
    assert [p.label.split("[")[1] for p in pairs] == ["scenario.batch_size=1]", "scenario.batch_size=4]"]
    for p in pairs:
        assert p.baseline.config["scenario"]["batch_size"] == p.candidate.config["scenario"]["batch_size"]
        assert "scenario.new_knob" in p.notes[0]
    # By config hash, the changed default leaves nothing to pair.
    assert all(p.baseline is None or p.candidate is None for p in pair_runs(base, cand, "config"))
    # A config only the baseline's history has (batch 8) is a note, not a missing run.
    result = evaluate(pair_runs([*base, run(8)], cand, "names"), default_gate())
    assert all(c.metric != "run" for c in result.checks)
    assert any("batch_size=8" in n and "only in the baseline" in n for n in result.notes)


# --- the command on stored runs ---------------------------------------------------------------------------------

TPOT = 0.010


def stored_run(tag, *, slow=1.0, mem=1.0, n=5, seed=0, estimated_energy=True, hardware="CPU test"):
    """A run with realistic repeat noise (2% on latency, 0.1% on memory)."""
    rng = np.random.default_rng(seed)
    metrics = [
        make_metric("latency.tpot_s", value=TPOT, unit="s", source=Source.TIMER, higher_is_better=False,
                    samples=list(TPOT * slow * (1 + 0.02 * rng.standard_normal(n)))),
        make_metric("memory.peak_bytes", value=1e8, unit="B", source=Source.SAMPLED, higher_is_better=False,
                    samples=list(1e8 * mem * (1 + 0.001 * rng.standard_normal(n)))),
        make_metric("quality.perplexity", value=30.0, unit="", source=Source.ANALYTIC, samples=[30.0],
                    higher_is_better=False),
        make_metric("energy.joules", value=3.0, unit="J", higher_is_better=False,
                    source=Source.ESTIMATED if estimated_energy else Source.COUNTER,
                    samples=list(3.0 * slow * (1 + 0.02 * rng.standard_normal(n)))),
    ]
    return make_record(metrics=metrics, tags=[tag], hardware={"label": hardware})


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path}/store.db"
    with open_store(url) as store:
        yield url, store


def gate(url, *args):
    return effbench_main(["gate", "--db", url, *args])


GATE_FILE = """\
alpha: 0.05
min_samples: 5
metrics:
  latency.tpot_s: +5%
  memory.peak_bytes: +2%
  quality.perplexity: +1%
  energy.joules: +5%
"""


def test_gate_passes_an_a_a_comparison(db, tmp_path, capsys, monkeypatch):
    url, store = db
    store.write(stored_run("main", seed=1))
    store.write(stored_run("pr", seed=2))  # same code, fresh noise
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    (tmp_path / "gate.yaml").write_text(GATE_FILE)
    assert gate(url, "--candidate", "tag:pr", "--baseline", "tag:main", "--gate", str(tmp_path / "gate.yaml")) == 0
    out = capsys.readouterr().out
    assert "effbench gate PASS" in out and "regression" in out  # the counts line
    md = summary.read_text()
    assert md.startswith("### ✅ effbench gate PASS") and "| `latency.tpot_s` |" in md and "✅ pass" in md
    assert "≈ " in md  # estimated energy is marked


def test_gate_fails_on_an_injected_regression_naming_the_metric(db, tmp_path, capsys):
    url, store = db
    store.write(stored_run("main", seed=1))
    store.write(stored_run("pr", seed=2, slow=1.12, mem=1.04))  # 12% slower, 4% more memory
    md = tmp_path / "gate.md"
    assert gate(url, "--candidate", "tag:pr", "--baseline", "tag:main", "--markdown", str(md)) == 1
    captured = capsys.readouterr()
    assert "REGRESSION" in captured.err and "latency.tpot_s" in captured.err and "memory.peak_bytes" in captured.err
    assert "effbench gate FAIL" in captured.out
    text = md.read_text()
    assert "❌ regression" in text and "**Regressions:**" in text and "`latency.tpot_s` +1" in text


def test_too_few_samples_warn_and_fail_only_when_strict(db, capsys):
    url, store = db
    store.write(stored_run("main", seed=1, n=3))
    store.write(stored_run("pr", seed=2, n=3, slow=1.3))
    assert gate(url, "--candidate", "tag:pr", "--baseline", "tag:main") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "inconclusive" in err and "too few samples" in err
    assert gate(url, "--candidate", "tag:pr", "--baseline", "tag:main", "--strict") == 1


def test_estimated_versus_measured_is_inconclusive(db):
    url, store = db
    base, cand = stored_run("main", seed=1), stored_run("pr", seed=2, estimated_energy=False)
    result = run_gate([cand], [base], gate_from_dict({"metrics": {"energy.joules": "5%"}}))
    (check,) = result.checks
    assert check.verdict is Verdict.INCONCLUSIVE and "source mismatch" in check.detail


def test_selectors_commit_file_and_failed_candidates(db, tmp_path):
    url, store = db
    base = stored_run("main", seed=1)
    base.software = {**base.software, "effbench_commit": "aaaa1111"}
    cand = stored_run("pr", seed=2)
    cand.software = {**cand.software, "effbench_commit": "bbbb2222"}
    store.write(base)
    store.write(cand)
    assert gate(url, "--candidate", "commit:bbbb22", "--baseline", "commit:aaaa") == 0
    store.export(tmp_path / "all.json")
    (tmp_path / "main.json").write_text(json.dumps([base.to_dict()]))
    assert gate(url, "--candidate", f"run:{cand.id[:8]}", "--baseline", f"file:{tmp_path / 'main.json'}") == 0
    # A failed candidate where the baseline ran is a regression.
    failed = make_record(status="failed", error="RuntimeError: CUDA out of memory", metrics=[], tags=["broken"],
                         hardware={"label": "CPU test"})
    store.write(failed)
    result = run_gate("tag:broken", "tag:main", default_gate(), lambda: open_store(url, read_only=True))
    assert result.exit_code() == 1 and "out of memory" in result.regressions[0].detail


def test_usage_errors_exit_2(db, tmp_path, capsys):
    url, store = db
    store.write(stored_run("main", seed=1))
    assert gate(url, "--candidate", "tag:nothing", "--baseline", "tag:main") == 2
    assert "selects no runs" in capsys.readouterr().err
    assert gate(url, "--candidate", "nonsense", "--baseline", "tag:main") == 2
    (tmp_path / "bad.yaml").write_text("metrics:\n  throughput.decode_tokens_per_s: +5%\n")
    assert gate(url, "--candidate", "tag:main", "--baseline", "tag:main", "--gate", str(tmp_path / "bad.yaml")) == 2
    assert "regression is a decrease" in capsys.readouterr().err
    other = make_record(model="other-model", tags=["other"])
    store.write(other)
    with pytest.raises(GateUsageError, match="no pair is in both"):
        run_gate("tag:other", "tag:main", default_gate(), lambda: open_store(url, read_only=True))


def test_gate_exit_code_from_the_real_command(db, tmp_path):
    url, store = db
    store.write(stored_run("main", seed=1))
    store.write(stored_run("pr", seed=2, slow=1.2))
    out = subprocess.run([sys.executable, "-m", "effbench.cli", "gate", "--candidate", "tag:pr", "--baseline",
                          "tag:main"], env={**os.environ, "EFFBENCH_DB_URL": url}, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "latency.tpot_s" in out.stderr


PLUGIN_TEST = """
def test_same(effbench_gate):
    effbench_gate.samples("latency.tpot_s", baseline=[1.0, 1.01, 0.99, 1.02, 0.98],
                          candidate=[1.0, 0.99, 1.01, 1.0, 1.02])

def test_slower(effbench_gate):
    effbench_gate.samples("latency.tpot_s", baseline=[1.0, 1.01, 0.99, 1.02, 0.98],
                          candidate=[1.1, 1.11, 1.09, 1.12, 1.08])

def test_stored(effbench_gate):
    effbench_gate.runs(candidate="tag:pr", baseline="tag:main")
"""


def test_pytest_plugin_fails_a_regressing_test(db, tmp_path):
    url, store = db
    store.write(stored_run("main", seed=1))
    # 15% slower: a 10% slowdown with these seeds measures +8.3%, p = 0.048 alone, which is not
    # significant once the gate controls the false alarms of its two tested checks (Benjamini–Hochberg).
    store.write(stored_run("pr", seed=2, slow=1.15))
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["effbench.gate.pytest_plugin"]\n')
    (tmp_path / "test_perf.py").write_text(PLUGIN_TEST)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--effbench-db", url,
                          "test_perf.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "1 passed" in out.stdout and "2 failed" in out.stdout, out.stdout[-3000:]
    assert "test_slower" in out.stdout and "latency.tpot_s: regression" in out.stdout
    assert "`latency.tpot_s`" in out.stdout  # the stored-runs gate's table


def test_pooling_runs_puts_run_to_run_drift_into_the_test():
    """Tight repeats inside each run, but runs drift ±8% (a shared machine): the newest
    run's repeats see a 'significant' change where there is none; one median per run does not."""
    rng = np.random.default_rng(3)

    def side(tag, slow=1.0):
        runs = []
        for level in rng.uniform(0.92, 1.08, 6):
            run = stored_run(tag, seed=int(rng.integers(1 << 30)), slow=slow * level)
            runs.append(run)
        return runs

    base, same = side("main"), side("pr")
    by_repeats = run_gate(same, base, gate_from_dict({"metrics": {"latency.tpot_s": "5%"}}))
    by_runs = run_gate(same, base, gate_from_dict({"pool": "runs", "metrics": {"latency.tpot_s": "5%"}}))
    (r,) = by_runs.checks
    assert r.n_baseline == r.n_candidate == 6 and r.detail.startswith("run medians:")
    assert r.verdict is not Verdict.REGRESSION
    assert by_repeats.checks[0].n_baseline == 5  # the newest run's repeats only
    slower = run_gate(side("pr2", slow=1.4), base, gate_from_dict({"pool": "runs", "metrics": {"latency.tpot_s": "5%"}}))
    assert slower.checks[0].verdict is Verdict.REGRESSION
