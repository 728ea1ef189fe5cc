"""`effbench ab` and the process-level gate: the statistics against hand computation
and seeded simulations of process medians with a known between-process spread,
the replay by `effbench gate --match ab`, and the command end to end."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from factories import make_metric, make_record
from scipy import stats

from effbench.cli import main as effbench_main
from effbench.gate import gate_from_dict
from effbench.gate.ab import AbError, absolute_store_url, parse_cpus, pinning, process_env
from effbench.gate.options import looks_tag
from effbench.gate.process_gate import evaluate_processes
from effbench.gate.process_stats import (
    Outcome,
    detectable_change,
    judge,
    margins,
    plan_looks,
    power_of,
    process_evidence,
    processes_needed,
    schedule,
    spent_alpha,
)
from effbench.gate.stats import Verdict, adjust_for_multiplicity
from effbench.metrics.record import Source, Status
from effbench.store import open_store

# --- the tests on process figures -------------------------------------------------------------------------------


def test_paired_t_test_on_log_ratios_by_hand():
    base = np.array([10.0, 10.4, 9.8, 10.1, 10.6, 9.9])
    cand = base * np.array([1.09, 1.12, 1.06, 1.10, 1.08, 1.11])
    ev = process_evidence(base, cand, tolerance=0.05, higher_is_better=False, paired=True)
    w = np.log(cand / base)
    t = (w.mean() - math.log(1.05)) / (w.std(ddof=1) / math.sqrt(6))
    assert ev.p_regression == pytest.approx(stats.t.sf(t, 5), rel=1e-9)
    assert ev.p_within == pytest.approx(stats.t.cdf(t, 5), rel=1e-9)
    assert ev.ratio == pytest.approx(math.exp(w.mean())) and ev.sd == pytest.approx(w.std(ddof=1))
    # Higher is better: throughput 9% lower is the same regression, margin −log(1 − t).
    thr = process_evidence(1 / base, 1 / cand, tolerance=0.05, higher_is_better=True, paired=True)
    t_thr = (w.mean() + math.log(0.95)) / (w.std(ddof=1) / math.sqrt(6))
    assert thr.p_regression == pytest.approx(stats.t.sf(t_thr, 5), rel=1e-9)
    assert margins(0.05, True) == (pytest.approx(-math.log(0.95)), pytest.approx(-math.log(1.05)))


def test_sign_flip_permutation_test_by_enumeration():
    rng = np.random.default_rng(4)
    base = np.exp(rng.normal(0, 0.05, 7))
    cand = base * np.exp(rng.normal(0.08, 0.03, 7))
    ev = process_evidence(base, cand, tolerance=0.05, higher_is_better=False, paired=True, test="permutation")
    d = np.log(cand / base) - math.log(1.05)
    means = [np.mean(d * np.array(signs)) for signs in itertools.product((1, -1), repeat=7)]
    assert ev.p_regression == pytest.approx(np.mean(np.array(means) >= d.mean() - 1e-12), rel=1e-9)
    # 3 pairs can never reach p < 0.05 by sign flips (smallest p = 1/8): too noisy, whatever the data.
    three = process_evidence(base[:3], base[:3] * 3, tolerance=0.05, higher_is_better=False, paired=True,
                             test="permutation")
    assert three.p_regression == pytest.approx(1 / 8)
    assert judge(three, three.p_regression, three.p_within, three.p_improvement, alpha=0.05,
                 margin=math.log(1.05), power=0.95, test="permutation") is Outcome.TOO_NOISY


def test_unpaired_welch_test():
    rng = np.random.default_rng(5)
    base, cand = np.exp(rng.normal(0, 0.04, 8)), np.exp(rng.normal(0.2, 0.04, 6))
    ev = process_evidence(base, cand, tolerance=0.05, higher_is_better=False, paired=False)
    expected = stats.ttest_ind(np.log(cand) - math.log(1.05), np.log(base), equal_var=False, alternative="greater")
    assert ev.p_regression == pytest.approx(expected.pvalue, rel=1e-9) and not ev.paired
    assert (ev.n_baseline, ev.n_candidate) == (8, 6)


def test_multiplicity_is_benjamini_hochberg_by_hand():
    # Sorted .01 .03 .04 .20, m = 4: p·m/rank = .04 .06 .0533 .20, then running minima from the top.
    assert adjust_for_multiplicity([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])


# --- power and the minimum detectable change, against simulation -----------------------------------------------

SIGMA = 0.06  # sd of the log ratio of two neighbouring processes' medians
TRIALS = 20000


def _shown(shift: float, n: int, rng, margin: float, alternative: str = "greater") -> np.ndarray:
    """Simulated paired sessions (log ratios N(shift, SIGMA)), all at once: whether the
    one-sided t-test at 0.05 shows the change beyond (greater) or within (less) `margin`.
    It is the test process_evidence runs (checked by hand above), vectorized over trials."""
    w = rng.normal(shift, SIGMA, (TRIALS, n))
    return stats.ttest_1samp(w - margin, 0.0, axis=1, alternative=alternative).pvalue < 0.05


def _within(rate: float, expected: float, z: float = 4.0) -> bool:
    return abs(rate - expected) <= z * math.sqrt(expected * (1 - expected) / TRIALS)


def test_power_matches_the_noncentral_t():
    rng = np.random.default_rng(11)
    margin, n = math.log(1.05), 8
    for extra in (0.02, 0.05, 0.08):
        analytic = power_of(extra, SIGMA, n, n, 0.05, paired=True)
        rate = _shown(margin + extra, n, rng, margin).mean()
        assert _within(rate, analytic), (extra, rate, analytic)
    # At the margin itself the false-alarm rate is alpha, the size of the test.
    assert _within(_shown(margin, n, rng, margin).mean(), 0.05)


def test_minimum_detectable_change_against_simulation():
    rng = np.random.default_rng(12)
    n, margin = 10, math.log(1.05)
    mdc = detectable_change(SIGMA, n, n, 0.05, 0.95, paired=True)
    # The normal approximation (z_.95 + z_.95)·sd/√n is a little below the t-based figure.
    assert 2 * 1.6448536 * SIGMA / math.sqrt(n) < mdc < 1.1 * 2 * 1.6448536 * SIGMA / math.sqrt(n)
    assert _within(_shown(margin + mdc, n, rng, margin).mean(), 0.95)  # worse by margin + MDC: caught
    # An unchanged candidate is shown within a margin equal to the MDC with the same power.
    assert _within(_shown(0.0, n, rng, mdc, "less").mean(), 0.95)
    # The process-level check agrees: it resolves a margin of MDC, not one a little below.
    assert judge_outcome(margin=mdc * 1.001, n=n) is not Outcome.TOO_NOISY
    assert judge_outcome(margin=mdc * 0.95, n=n) is Outcome.TOO_NOISY


def judge_outcome(margin: float, n: int) -> Outcome:
    """The outcome of a check whose log ratios have exactly sd SIGMA and mean 0."""
    w = np.resize([1.0, -1.0], n) * SIGMA * math.sqrt((n - 1) / n)  # mean 0, sd SIGMA exactly
    base = np.ones(n)
    ev = process_evidence(base, np.exp(w), tolerance=math.expm1(margin), higher_is_better=False, paired=True)
    assert ev.sd == pytest.approx(SIGMA)
    return judge(ev, ev.p_regression, ev.p_within, ev.p_improvement, alpha=0.05, margin=margin, power=0.95,
                 test="t")


def test_processes_needed_is_the_smallest_n_that_resolves_the_margin():
    margin = math.log(1.05)
    n = processes_needed(margin, 0.08, 0.05, 0.95, paired=True, test="t")
    assert detectable_change(0.08, n, n, 0.05, 0.95, paired=True) <= margin
    assert detectable_change(0.08, n - 1, n - 1, 0.05, 0.95, paired=True) > margin
    # Sign flips also need 2^-n below alpha: never fewer than 5 pairs at 0.05.
    assert processes_needed(margin, 1e-6, 0.05, 0.95, paired=True, test="permutation") == 5


# --- the sequential rule ----------------------------------------------------------------------------------------


def test_alpha_spending_by_hand():
    def obf(t):  # 2 − 2Φ(z_{0.975}/√t), Φ through erfc
        return math.erfc(1.959963984540054 / math.sqrt(t) / math.sqrt(2))

    assert spent_alpha(1.0, 0.05) == 0.05 and spent_alpha(0.0, 0.05) == 0.0
    assert spent_alpha(0.5, 0.05) == pytest.approx(obf(0.5), rel=1e-9) == pytest.approx(0.005574, abs=1e-6)
    plan = plan_looks(5, 20, 4)
    assert plan == (5, 10, 15, 20)
    looks = schedule(plan, 20, 0.05, ended=True)
    assert [look.n for look in looks] == [5, 10, 15, 20] and looks[-1].final
    assert sum(look.alpha for look in looks) == pytest.approx(0.05)
    assert looks[1].alpha == pytest.approx(obf(0.5) - obf(0.25))
    # Out of time at 12 pairs: the looks at 5 and 10, then a final one at 12 spending what is left.
    cut = schedule(plan, 12, 0.05, ended=True)
    assert [(look.n, look.final) for look in cut] == [(5, False), (10, False), (12, True)]
    assert sum(look.alpha for look in cut) == pytest.approx(0.05)
    assert [look.n for look in schedule(plan, 12, 0.05, ended=False)] == [5, 10]


TOL = {"latency.tpot_s": "+5%", "memory.peak_bytes": "+2%"}


def session(rng, *, pairs: int, change: float, sigma: float, plan=(5, 10, 15, 20), start: int = 0):
    """Records of one simulated `effbench ab` session: per-process medians with a
    between-process log-sd `sigma` on latency (memory nearly exact), candidate latency × exp(change)."""
    runs = {"A": [], "B": []}
    for k in range(start, start + pairs):
        for side in ("A", "B") if k % 2 == 0 else ("B", "A"):
            slow = math.exp(change) if side == "B" else 1.0
            metrics = [
                make_metric("latency.tpot_s", value=0.01, unit="s", source=Source.TIMER, higher_is_better=False,
                            samples=[0.01 * slow * math.exp(rng.normal(0, sigma))]),
                make_metric("memory.peak_bytes", value=1e8, unit="B", source=Source.SAMPLED,
                            higher_is_better=False, samples=[1e8 * (1 + 1e-4 * rng.standard_normal())]),
            ]
            runs[side].append(make_record(metrics=metrics, hardware={"label": "sim"}, config_hash="h",
                                          tags=["ab:sim", f"side:{side}", f"pair:{k}", looks_tag(plan)]))
    return runs["A"], runs["B"]


def run_sequential(rng, change: float, sigma: float, gate, plan=(5, 10, 15, 20)):
    """A live session: evaluate at each planned look, stop once decided."""
    base, cand = [], []
    for n in plan:
        more_b, more_c = session(rng, pairs=n - len(base), change=change, sigma=sigma, plan=plan, start=len(base))
        base, cand = base + more_b, cand + more_c
        result = evaluate_processes(base, cand, gate, ended=n == plan[-1])
        if result.decided or n == plan[-1]:
            return result, n


def test_sequential_false_alarms_at_the_tolerance_stay_below_alpha():
    """The hardest A/A: a true change exactly at the tolerance (+5%). Over all looks
    together the gate may call it a regression at most alpha of the time (one
    metric, so no help from the multiplicity control)."""
    rng = np.random.default_rng(21)
    gate = gate_from_dict({"metrics": {"latency.tpot_s": "+5%"}})
    trials = 300
    alarms = sum(run_sequential(rng, math.log(1.05), 0.02, gate)[0].regressions != [] for _ in range(trials))
    limit = stats.binom.ppf(0.999, trials, 0.05) / trials  # alpha, plus the binomial margin of 300 trials
    assert alarms / trials <= limit, (alarms, limit)
    # A true A/A (no change) on a runner that resolves 5%: both metrics pass before the budget.
    result, n = run_sequential(rng, 0.0, 0.02, gate_from_dict({"metrics": TOL}))
    assert {c.verdict for c in result.checks} == {Verdict.PASS} and n < 20


def test_sequential_gate_catches_a_10_percent_slowdown_early():
    rng = np.random.default_rng(22)
    gate = gate_from_dict({"metrics": TOL})
    caught, sizes = 0, []
    for _ in range(40):
        result, n = run_sequential(rng, math.log(1.10), 0.02, gate)
        caught += [c.verdict for c in result.checks if c.metric == "latency.tpot_s"] == [Verdict.REGRESSION]
        sizes.append(n)
    assert caught / 40 >= 0.95 and np.median(sizes) < 20  # decided before the budget


def test_a_noisy_runner_is_inconclusive_never_a_verdict_by_luck():
    rng = np.random.default_rng(23)
    base, cand = session(rng, pairs=5, change=math.log(1.30), sigma=0.15, plan=(5,))
    result = evaluate_processes(base, cand, gate_from_dict({"metrics": TOL}))
    tpot = next(c for c in result.checks if c.metric == "latency.tpot_s")
    assert tpot.verdict is Verdict.INCONCLUSIVE and "runner too noisy for this tolerance" in tpot.detail
    assert tpot.needed > 5 and f"≈ {tpot.needed} processes per side" in tpot.detail
    assert tpot.detectable > 0.05
    mem = next(c for c in result.checks if c.metric == "memory.peak_bytes")
    assert mem.verdict is Verdict.PASS  # memory is exact: resolved at 5 pairs
    assert any("resolves ≥" in line and "latency.tpot_s" in line for line in result.resolution)
    assert "Benjamini–Hochberg" in result.multiplicity and "look 1 of 1" in result.design


# --- the plain gate re-reads a session --------------------------------------------------------------------------


def test_plain_gate_replays_a_stored_session(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/ab.db"
    rng = np.random.default_rng(31)
    base, cand = session(rng, pairs=10, change=math.log(1.25), sigma=0.02)
    with open_store(url) as store:
        for r in (*base, *cand):
            store.write(r)
    expected = evaluate_processes(base, cand, gate_from_dict({"metrics": TOL}))
    (tmp_path / "gate.yaml").write_text("metrics:\n  latency.tpot_s: +5%\n  memory.peak_bytes: +2%\n")
    code = effbench_main(["gate", "--db", url, "--candidate", "tag:ab:sim,side:B", "--baseline", "tag:ab:sim,side:A",
                          "--match", "ab", "--gate", str(tmp_path / "gate.yaml")])
    out, err = capsys.readouterr()
    assert code == 1 and "REGRESSION" in err and "latency.tpot_s" in err
    assert [c.verdict for c in expected.checks] == [Verdict.REGRESSION, Verdict.PASS]
    assert "resolves ≥" in out and "one median per process" in out
    # Without pair tags the same runs are compared unpaired, in one look.
    for r in (*base, *cand):
        r.tags = [t for t in r.tags if not t.startswith("pair:")]
    unpaired = evaluate_processes(base, cand, gate_from_dict({"metrics": TOL}))
    assert "unpaired" in unpaired.design and unpaired.regressions[0].metric == "latency.tpot_s"


def test_mixed_sessions_are_a_usage_error(tmp_path):
    rng = np.random.default_rng(32)
    base, cand = session(rng, pairs=3, change=0.0, sigma=0.02)
    other, _ = session(rng, pairs=3, change=0.0, sigma=0.02)
    from effbench.gate import GateUsageError

    with pytest.raises(GateUsageError, match="same pair tag"):
        evaluate_processes(base + other, cand, gate_from_dict({"metrics": TOL}))


def test_a_failed_candidate_process_is_a_regression():
    rng = np.random.default_rng(33)
    base, cand = session(rng, pairs=5, change=0.0, sigma=0.02, plan=(5,))
    cand[3].status, cand[3].error = Status.FAILED, "RuntimeError: out of memory\nTraceback ..."
    result = evaluate_processes(base, cand, gate_from_dict({"metrics": TOL}))
    (run,) = [c for c in result.checks if c.metric == "run"]
    assert run.verdict is Verdict.REGRESSION and "out of memory" in run.detail and result.decided
    assert result.exit_code() == 1


def test_a_session_whose_every_process_failed_is_judged_not_refused():
    """No ok run carries the planned looks: still one session. Both sides failed, so nothing
    was measured: inconclusive with the error (a failure under --strict), not a usage error."""
    rng = np.random.default_rng(34)
    base, cand = session(rng, pairs=2, change=0.0, sigma=0.02, plan=(3,))
    for r in (*base, *cand):
        r.status, r.error = Status.FAILED, "ValueError: held-out text too short"
    result = evaluate_processes(base, cand, gate_from_dict({"metrics": TOL}))
    (run,) = [c for c in result.checks if c.metric == "run"]
    assert run.verdict is Verdict.INCONCLUSIVE and "held-out text too short" in run.detail
    assert (result.exit_code(), result.exit_code(strict=True)) == (0, 1)


def test_processes_share_hash_seed_threads_and_pinning():
    env = process_env(0, 1)
    assert env["PYTHONHASHSEED"] == "0" and env["OMP_NUM_THREADS"] == "1"
    assert process_env(3, 0).get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")  # 0: left alone
    cpu = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         capture_output=True, text=True, preexec_fn=pinning(parse_cpus(str(cpu))), check=True)
    assert out.stdout.strip() == f"[{cpu}]"
    with pytest.raises(AbError, match="this process may use CPUs"):
        parse_cpus("0-4096")
    with pytest.raises(AbError, match="give CPU indices"):
        parse_cpus("first")
    assert absolute_store_url("sqlite:///rel/x.db") == f"sqlite:///{os.getcwd()}/rel/x.db"
    assert absolute_store_url("json://rel/dir") == f"json://{os.getcwd()}/rel/dir"


# --- `effbench ab` end to end -----------------------------------------------------------------------------------

QUICK = ["scenario.repeats=2", "scenario.output_tokens=4", "scenario.prompt_tokens=32", "scenario.eval_max_tokens=64",
         "scenario.eval_context=32", "hardware.device=cpu"]


def ab(tmp_path, *args):
    return effbench_main(["ab", "--db", f"sqlite:///{tmp_path}/ab.db", "--workdir", str(tmp_path / "ab"), *args])


def test_unknown_ref_and_bad_sides_exit_2(tmp_path, capsys):
    assert ab(tmp_path, "ref:no-such-ref-xyz", "ref:HEAD") == 2
    assert "no such commit" in capsys.readouterr().err
    assert ab(tmp_path, f"path:{tmp_path}/nowhere", "config:") == 2
    assert "neither a checkout directory nor an executable" in capsys.readouterr().err
    assert ab(tmp_path, "tiny", "config:") == 2
    assert "use config:" in capsys.readouterr().err
    assert ab(tmp_path, "config:store.url=sqlite:///x.db", "config:") == 2
    assert "store.url is set by effbench ab" in capsys.readouterr().err
    assert ab(tmp_path, "--min", "5", "--max", "3", "config:", "config:") == 2
    assert not (tmp_path / "ab.db").exists()


def test_a_side_whose_run_is_a_bad_config_exits_2_with_the_reason(tmp_path, capsys):
    assert ab(tmp_path, "--min", "2", "--max", "2", "--looks", "1", "config:", "config:scenario.output_tokens=1",
              "hardware.device=cpu") == 2
    err = capsys.readouterr().err
    assert "side B (config:scenario.output_tokens=1)" in err and "stored no run" in err and "must be ≥ 2" in err


def test_a_side_that_fails_to_install_exits_2_with_the_reason(tmp_path, capsys, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Makefile").write_text("install:\n\t@echo 'error: cannot build wheel for effbench' >&2; exit 3\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "Makefile"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "broken install"], check=True)
    monkeypatch.chdir(repo)
    assert ab(tmp_path, "ref:HEAD", "config:") == 2
    err = capsys.readouterr().err
    assert "side A (ref:HEAD)" in err and "make install" in err and "cannot build wheel" in err


@pytest.mark.slow
def test_ab_on_two_configs_fails_a_slower_side_naming_the_metric(tmp_path, capsys):
    """Side B is a 4× wider model (half as deep, ~7× the parameters): prefill and memory
    genuinely grow. 3 pairs, one look."""
    (tmp_path / "gate.yaml").write_text("metrics:\n  latency.ttft_s: +200%\n  memory.peak_bytes: +5%\n")
    code = ab(tmp_path, "--min", "3", "--max", "3", "--looks", "1", "--gate", str(tmp_path / "gate.yaml"),
              "config:", "config:model.hidden_size=1024 model.intermediate_size=2752 model.num_layers=2", *QUICK)
    out, err = capsys.readouterr()
    assert code == 1, err[-3000:]
    assert "REGRESSION" in err and "memory.peak_bytes" in err
    assert "resolves ≥" in out and "re-read with: effbench gate" in out
    # Never a pass for the much slower prefill: a regression, or too noisy to say.
    ttft = [line for line in err.splitlines() if "latency.ttft_s" in line]
    assert not any("pass" in line for line in ttft)
    with open_store(f"sqlite:///{tmp_path}/ab.db", read_only=True) as store:
        runs = store.runs()
    assert len(runs) == 6 and {len([t for t in r.tags if t.startswith(("ab:", "side:", "pair:", "ab-looks:"))])
                               for r in runs} == {4}
    assert [t for r in sorted(runs, key=lambda r: _span(r)[0]) for t in r.tags if t.startswith("side:")] == \
        ["side:A", "side:B", "side:B", "side:A", "side:A", "side:B"]
    assert {r.software.get("python_hash_seed") for r in runs} == {"0"}
    # --interleave windows (the default): a pair's two runs ran at once, their windows taking turns.
    assert all(_overlap(*pair) for pair in _pairs(runs))


def _pairs(runs) -> list:
    by_pair: dict[str, list] = {}
    for r in runs:
        by_pair.setdefault(next(t for t in r.tags if t.startswith("pair:")), []).append(r)
    return list(by_pair.values())


def _span(r) -> tuple:
    """When the run's scenario started and ended (a record is created at its end)."""
    from datetime import datetime, timedelta

    end = datetime.fromisoformat(r.created_at)
    return end - timedelta(seconds=r.duration_s), end


def _overlap(x, y) -> bool:
    (s1, e1), (s2, e2) = _span(x), _span(y)
    return s1 < e2 and s2 < e1


@pytest.mark.slow
def test_ab_on_the_same_config_passes(tmp_path, capsys):
    """A/A: 2 pairs, one whole process after the other. Latency cannot be resolved that
    cheaply (inconclusive, with the processes it would need); size is deterministic and
    passes; nothing regresses."""
    (tmp_path / "gate.yaml").write_text("metrics:\n  latency.tpot_s: +5%\n  compression.size_bytes: +1%\n")
    code = ab(tmp_path, "--min", "2", "--max", "2", "--looks", "1", "--gate", str(tmp_path / "gate.yaml"),
              "--interleave", "processes", "config:", "config:", *QUICK)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "REGRESSION" not in err and "runner too noisy for this tolerance" in out.replace("\n", " ") + err
    assert "effbench gate PASS" in out
    with open_store(f"sqlite:///{tmp_path}/ab.db", read_only=True) as store:
        assert not any(_overlap(*pair) for pair in _pairs(store.runs()))
