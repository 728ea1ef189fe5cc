"""How good is the gate on latency? False alarms on A/A, detection on A/B, measured.

Runs the tiny model (tiny-llama, 3.4M parameters) on this machine:

- A: the same code, run after run;
- B: a known regression: after each forward a busy-wait of a calibrated share of
  the forward's own CPU time, so TPOT grows by --slowdown (default 10%); and a
  buffer of --memory (default 4%) of the process's peak RSS held during each repeat.

A *run* is what `effbench run` measures: one warm-up generate, then --repeats
measured generates (effbench's TokenTimer and CPU memory tracker): one sample per
repeat of `latency.tpot_s` and `memory.peak_bytes`.

--mode ab (default): the design of `effbench ab`. --pairs rounds, each of an A/B
pair of fresh worker processes (A B, then B A) and a same-code pair (A A, then
B B), one run each, with PYTHONHASHSEED, threads and pinning as `effbench ab`
sets them; a pair's two processes run at once with their measured windows
taking turns (--interleave windows, as `effbench ab` by default) or one after
the other (--interleave processes). Each process's median is one figure; the
gate's own code (effbench.gate.process_gate: paired t-test on log ratios,
planned looks with alpha spending, power-aware verdicts) is replayed on
sessions drawn from these pairs — A/B sessions from the A/B pairs, A/A sessions
from the same-code pairs — giving the A/A false-alarm rate, the detection rate
of the slowdown, and the pairs (processes per side) and minutes per gate.

--mode repeats: the earlier design (docs/results/gate_power.md, first three
measurements): many runs per worker process, the repeat-level test across and
within processes.

    .venv/bin/python benchmarks/gate_power.py --mode ab --pairs 30     # ~21 min on 2 quiet cores
    .venv/bin/python benchmarks/gate_power.py --mode ab --kinds A/B --pairs 40 --save b.json   # A/B pairs only;
    .venv/bin/python benchmarks/gate_power.py --analyse b.json --aa-from a.json   # same-code pairs of a.json
    .venv/bin/python benchmarks/gate_power.py --mode ab --quick        # a smoke test of the script
    .venv/bin/python benchmarks/gate_power.py --mode repeats           # the earlier analysis, ~5-10 min
    .venv/bin/python benchmarks/gate_power.py --save s.json            # keep every figure; --analyse s.json re-reads
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT, OUTPUT = 64, 32
KIND_HOW = {"A/B": "an A/B pair (A B, then B A)", "A/A": "a same-code pair (A A, then B B)"}
INTERLEAVE_HOW = {"windows": "at once, their measured windows taking turns A B B A … (as `effbench ab`)",
                  "processes": "one after the other (`effbench ab --interleave processes`)"}


# --- worker: measure runs ---------------------------------------------------------------------------------------


class InjectedSlowdown:
    """Forward hooks on the model: after each forward, extra work of `factor` × the
    forward's own CPU time.

    A busy-wait on the thread's CPU clock rather than the issue's time.sleep: a
    sleep overshoots by ~0.1 ms and, on a loaded machine, by however long the
    scheduler takes to wake the thread, so it would inject more than stated. Spun
    CPU time is extra work, like the slower code of a real regression; on a quiet
    machine it is the same wall time, on a busy one it stretches as real work would."""

    def __init__(self, model) -> None:
        self.factor = 0.0
        self.c0 = 0.0
        self.forward_cpu_s = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, module, args) -> None:
        self.c0 = time.thread_time()

    def _post(self, module, args, output) -> None:
        now = time.thread_time()
        self.forward_cpu_s += now - self.c0
        if self.factor:
            end = now + self.factor * (now - self.c0)
            while time.thread_time() < end:
                pass


def cpu_token_timer(device):
    """effbench's TokenTimer, also noting the thread's CPU clock at each token."""
    from effbench.metrics.latency import TokenTimer

    class CpuTokenTimer(TokenTimer):
        def reset(self) -> None:
            super().reset()
            self.cpu_start = time.thread_time()
            self.cpu_times: list[float] = []

        def put(self, value) -> None:
            seen = self._prompt_seen
            super().put(value)
            if seen:
                self.cpu_times.append(time.thread_time())

        def cpu_tpot(self) -> float:
            return (self.cpu_times[-1] - self.cpu_times[0]) / (len(self.cpu_times) - 1)

        def cpu_decode(self) -> float:
            return self.cpu_times[-1] - self.cpu_times[0]

    return CpuTokenTimer(device)


def resident_buffer(n_bytes: int):
    """`n_bytes` of resident memory outside the allocator (an anonymous mmap with
    every page touched), returned to the OS on close(). Through malloc, glibc
    would keep the freed pages and inflate the *next* (A) run's RSS too."""
    if not n_bytes:
        return None
    import mmap

    import numpy as np

    buf = mmap.mmap(-1, n_bytes)
    view = np.frombuffer(buf, dtype=np.uint8)
    view[:: mmap.PAGESIZE] = 1
    del view
    return buf


def worker(args: argparse.Namespace) -> dict:
    import torch

    from effbench.config.schema import BuiltinModelConfig
    from effbench.metrics.memory import CpuMemoryTracker
    from effbench.metrics.window import MeasuredWindow
    from effbench.models import load_model

    cpu = torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(BuiltinModelConfig(name="tiny-llama")).model
    ids = torch.randint(3, 259, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=OUTPUT, min_new_tokens=OUTPUT,
              do_sample=False, pad_token_id=0)
    slow = InjectedSlowdown(model)
    timer = cpu_token_timer(cpu)

    def one_run(factor: float, extra_bytes: int) -> dict:
        slow.factor = factor
        mem = CpuMemoryTracker()
        window = MeasuredWindow([mem], cpu)
        tpot, tpot_cpu = [], []
        with torch.inference_mode():
            model.generate(**kw)  # warm-up, as scenario.warmup=1
            for _ in range(args.repeats):
                with window.measure():
                    buf = resident_buffer(extra_bytes)
                    timer.reset()
                    model.generate(**kw, streamer=timer)
                    if buf is not None:
                        buf.close()
                tpot.append(timer.timing().tpot)
                tpot_cpu.append(timer.cpu_tpot())
        return {"tpot": tpot, "tpot_cpu": tpot_cpu, "peak": mem.peak}

    def forward_share() -> float:
        """Share of decode CPU time spent inside forward (no injection)."""
        slow.factor = 0.0
        shares = []
        with torch.inference_mode():
            for _ in range(5):
                slow.forward_cpu_s = 0.0
                model.generate(**{**kw, "max_new_tokens": 1, "min_new_tokens": 1})  # the prefill alone
                prefill = slow.forward_cpu_s
                slow.forward_cpu_s = 0.0
                timer.reset()
                model.generate(**kw, streamer=timer)
                # forwards of the decode steps / CPU time from the first token to the last
                shares.append((slow.forward_cpu_s - prefill) / timer.cpu_decode())
        return statistics.median(shares)

    # Calibrate: factor × (forward's share of decode CPU time) = the slowdown.
    share = forward_share()
    factor = args.slowdown / share
    calib = one_run(0.0, 0)
    extra = int(args.memory * statistics.median(calib["peak"]))
    # --variant: one run of one variant (mode ab); else --runs rounds of A B / B A (mode repeats).
    rounds = [(args.variant,)] if args.variant else \
        [("A", "B") if i % 2 == 0 else ("B", "A") for i in range(args.runs)]
    runs = []
    for i, order in enumerate(rounds):
        for variant in order:
            r = one_run(factor if variant == "B" else 0.0, extra if variant == "B" else 0)
            runs.append({"variant": variant, "round": i, **r})
    return {"pid": os.getpid(), "forward_share": share, "factor": factor, "extra_bytes": extra,
            "threads": torch.get_num_threads(), "runs": runs}


# --- analysis ---------------------------------------------------------------------------------------------------


def pairs(processes: list[dict], variant_b: str, cross: bool) -> list[tuple[dict, dict]]:
    """(baseline run, candidate run): A vs `variant_b`, across processes or adjacent in one."""
    out = []
    by_proc = [{v: [r for r in p["runs"] if r["variant"] == v] for v in ("A", "B")} for p in processes]
    if cross:
        for p, q in itertools.permutations(range(len(processes)), 2):
            for a, b in zip(by_proc[p]["A"], by_proc[q][variant_b]):
                out.append((a, b))
    else:
        for runs in by_proc:
            a_runs, b_runs = runs["A"], runs[variant_b]
            if variant_b == "A":
                out += list(zip(a_runs, a_runs[1:]))
            else:
                out += list(zip(a_runs, b_runs))
    return out


def run_groups(processes: list[dict], variant_b: str, cross: bool, metric: str,
               k: int = 5) -> list[tuple[dict, dict]]:
    """(baseline, candidate) groups of k runs, each run reduced to its median: what
    `pool: runs` compares. Across processes: run block h of process p vs block h of q;
    in one process: block 0 vs block 1 (A/A), block h of A vs block h of B (A/B)."""
    def block(runs, h):
        return {"m": [statistics.median(r[metric]) for r in runs[h * k:(h + 1) * k]]}

    by_proc = [{v: [r for r in p["runs"] if r["variant"] == v] for v in ("A", "B")} for p in processes]
    n_blocks = min(len(p["A"]) for p in by_proc) // k
    out = []
    if cross:
        for p, q in itertools.permutations(range(len(processes)), 2):
            out += [(block(by_proc[p]["A"], h), block(by_proc[q][variant_b], h)) for h in range(n_blocks)]
    else:
        for runs in by_proc:
            if variant_b == "A":
                out += [(block(runs["A"], h), block(runs["A"], h + 1)) for h in range(n_blocks - 1)]
            else:
                out += [(block(runs["A"], h), block(runs["B"], h)) for h in range(n_blocks)]
    return out


def rates(pair_list, metric: str, tolerance: float, alpha: float, repeats: int, method: str = "mannwhitney",
          min_samples: int = 5) -> dict[str, float]:
    from effbench.gate.stats import Verdict, compare_samples

    counts = {v: 0 for v in Verdict}
    for base, cand in pair_list:
        c = compare_samples(base[metric][:repeats], cand[metric][:repeats], tolerance=tolerance,
                            higher_is_better=False, alpha=alpha, min_samples=min(min_samples, repeats),
                            method=method, n_resamples=2000)
        counts[c.verdict] += 1
    n = max(len(pair_list), 1)
    return {v.value: counts[v] / n for v in Verdict} | {"n": len(pair_list)}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


METRICS = {"tpot": "`latency.tpot_s`, wall clock", "tpot_cpu": "`latency.tpot_s`, thread CPU time",
           "peak": "`memory.peak_bytes`"}


def noise(all_runs: list[dict], metric: str) -> str:
    a = [r for r in all_runs if r["variant"] == "A"]
    within = statistics.median(statistics.stdev(r[metric]) / statistics.mean(r[metric]) for r in a)
    medians = [statistics.median(r[metric]) for r in a]
    between = statistics.stdev(medians) / statistics.mean(medians)
    return (f"within-run CV {pct(within)}, run-to-run CV of run medians {pct(between)}, "
            f"max/min {max(medians) / min(medians):.2f}")


def analyse(processes: list[dict], repeats: int, elapsed: float, load: float | None = None) -> str:
    from effbench.gate.config import DEFAULT_ALPHA, DEFAULT_MIN_SAMPLES, DEFAULT_TOLERANCES

    tpot_tol = DEFAULT_TOLERANCES["latency.tpot_s"]
    tol = {"tpot": tpot_tol, "tpot_cpu": tpot_tol, "peak": DEFAULT_TOLERANCES["memory.peak_bytes"]}
    all_runs = [r for p in processes for r in p["runs"]]

    def achieved(m: str) -> str:
        b = statistics.median(x for r in all_runs if r["variant"] == "B" for x in r[m])
        a = statistics.median(x for r in all_runs if r["variant"] == "A" for x in r[m])
        return f"{b / a - 1:+.1%}"

    lines = [
        "## Setup", "",
        f"- {len(processes)} worker processes, one after another; {len(all_runs) // 2 // len(processes)} A and as "
        f"many B runs each, alternating A B / B A; {repeats} measured repeats per run after 1 warm-up; tiny-llama "
        f"(3.4M parameters), prompt {PROMPT}, {OUTPUT} output tokens, torch threads {processes[0]['threads']}; "
        f"{elapsed:.0f} s in all; load average {load if load is not None else os.getloadavg()[0]:.1f} at the end "
        f"of the measurement, on {os.cpu_count()} cores.",
        f"- Injected in B: after each forward, a busy-wait of {statistics.mean(p['factor'] for p in processes):.3f} × "
        f"its CPU time (forward is {pct(statistics.mean(p['forward_share'] for p in processes))} of decode CPU "
        f"time: +10% decode work), and {statistics.mean(p['extra_bytes'] for p in processes) / 2**20:.1f} MiB "
        "held during each repeat.",
        f"- Achieved, median of all B samples / all A samples: TPOT wall {achieved('tpot')}, TPOT CPU "
        f"{achieved('tpot_cpu')}, peak RSS {achieved('peak')}.",
    ]
    lines += [f"- Noise of {METRICS[m]}: {noise(all_runs, m)}." for m in METRICS]
    lines += [
        "",
        f"## At the defaults (Mann-Whitney, alpha {DEFAULT_ALPHA}, TPOT +{pct(tol['tpot'])}, peak memory "
        f"+{pct(tol['peak'])}, ≥ {DEFAULT_MIN_SAMPLES} samples)", "",
        "| metric | pairs | A/A false alarm | A/A inconclusive | A/B detection | A/B inconclusive | checks A/A, A/B |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for metric, name in METRICS.items():
        for cross in (True, False):
            aa = rates(pairs(processes, "A", cross), metric, tol[metric], DEFAULT_ALPHA, repeats)
            ab = rates(pairs(processes, "B", cross), metric, tol[metric], DEFAULT_ALPHA, repeats)
            lines.append(f"| {name} | {'across processes' if cross else 'same process, adjacent'} | "
                         f"{pct(aa['regression'])} | {pct(aa['inconclusive'])} | {pct(ab['regression'])} | "
                         f"{pct(ab['inconclusive'])} | {aa['n']}, {ab['n']} |")
    lines += ["", "## Bootstrap interval instead (same defaults, across processes)", "",
              "| metric | A/A false alarm | A/B detection |", "| --- | ---: | ---: |"]
    for metric, name in METRICS.items():
        aa = rates(pairs(processes, "A", True), metric, tol[metric], DEFAULT_ALPHA, repeats, "bootstrap")
        ab = rates(pairs(processes, "B", True), metric, tol[metric], DEFAULT_ALPHA, repeats, "bootstrap")
        lines.append(f"| {name} | {pct(aa['regression'])} | {pct(ab['regression'])} |")
    aa_pairs, ab_pairs = pairs(processes, "A", True), pairs(processes, "B", True)
    ks = sorted({3, 5, repeats} & set(range(1, repeats + 1)))
    for metric in ("tpot", "tpot_cpu"):
        lines += ["", f"## TPOT grid, {METRICS[metric].split(', ')[1]} (Mann-Whitney, across processes): "
                      "false alarm / detection", "",
                  "| repeats | tolerance | alpha 0.01 | alpha 0.05 | alpha 0.10 |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for k in ks:
            for t in (0.025, 0.05, 0.075):
                cells = []
                for alpha in (0.01, 0.05, 0.10):
                    aa = rates(aa_pairs, metric, t, alpha, k, min_samples=k)
                    ab = rates(ab_pairs, metric, t, alpha, k, min_samples=k)
                    cells.append(f"{pct(aa['regression'])} / {pct(ab['regression'])}")
                lines.append(f"| {k} | +{pct(t)} | " + " | ".join(cells) + " |")
    lines += ["", "## Peak memory grid (Mann-Whitney, alpha 0.05, across processes): false alarm / detection", "",
              "| repeats | +1% | +2% | +3% |", "| ---: | ---: | ---: | ---: |"]
    for k in ks:
        cells = []
        for t in (0.01, 0.02, 0.03):
            aa = rates(aa_pairs, "peak", t, 0.05, k, min_samples=k)
            ab = rates(ab_pairs, "peak", t, 0.05, k, min_samples=k)
            cells.append(f"{pct(aa['regression'])} / {pct(ab['regression'])}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "## One median per run (`pool: runs`), 5 runs per side, defaults otherwise", "",
              "| metric | pairs | A/A false alarm | A/A inconclusive | A/B detection | A/B inconclusive | "
              "checks A/A, A/B |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for metric, name in METRICS.items():
        for cross in (True, False):
            aa = rates(run_groups(processes, "A", cross, metric), "m", tol[metric], DEFAULT_ALPHA, 5)
            ab = rates(run_groups(processes, "B", cross, metric), "m", tol[metric], DEFAULT_ALPHA, 5)
            lines.append(f"| {name} | {'across processes' if cross else 'same process'} | "
                         f"{pct(aa['regression'])} | {pct(aa['inconclusive'])} | {pct(ab['regression'])} | "
                         f"{pct(ab['inconclusive'])} | {aa['n']}, {ab['n']} |")
    lines += ["", "(3 vs 3 repeats can never reach p < 0.05 with Mann-Whitney — the smallest p is 1/C(6,3) = "
                  "0.05 — so those cells are inconclusive by construction.)"]
    return "\n".join(lines) + "\n"


# --- mode ab: one run per process, the process-level gate -------------------------------------------------------


def measure_ab(args: argparse.Namespace) -> list[dict]:
    """--pairs rounds, each of one A/B pair (A B, then B A in the next round) and one
    same-code pair (A A, then B B); each pair's two worker processes run as `effbench ab`
    runs them (--interleave): windows taking turns, or one whole process after the
    other. One figure (median) per process."""
    from effbench.gate.ab import parse_cpus, pinning, process_env
    from effbench.turns import TurnProcess, run_in_turns

    env, pin = process_env(args.hash_seed, args.threads), pinning(parse_cpus(args.cpus))
    started = time.perf_counter()
    processes = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.pairs):
            first, other = ("A", "B") if k % 2 == 0 else ("B", "A")
            for kind, variants in (("A/B", (first, other)), ("A/A", (first, first))):
                if kind not in args.kinds:
                    continue
                outs = [Path(tmp, f"{k}-{kind[-1]}{i}.json") for i in range(2)]
                cmds = [[sys.executable, __file__, "--worker", str(out), "--variant", v, *_worker_args(args)]
                        for out, v in zip(outs, variants)]
                t0 = time.perf_counter()
                if args.interleave == "windows":
                    procs = [TurnProcess(cmd, env, os.getcwd(), str(out) + ".log", pin) for cmd, out in zip(cmds, outs)]
                    run_in_turns(*procs)
                    if bad := [p for p in procs if p.returncode or not p.yields]:
                        sys.exit(f"worker failed or took no turns: see {bad[0].log_path}")
                else:
                    for cmd in cmds:
                        subprocess.run(cmd, check=True, env=env, preexec_fn=pin)
                wall = (time.perf_counter() - t0) / 2
                for i, (out, variant) in enumerate(zip(outs, variants)):
                    w = json.loads(out.read_text())
                    (run,) = w["runs"]
                    processes.append({"variant": variant, "pair": k, "kind": kind, "order": i, "wall_s": wall,
                                      "tpot": statistics.median(run["tpot"]), "peak": statistics.median(run["peak"]),
                                      "factor": w["factor"], "forward_share": w["forward_share"],
                                      "extra_bytes": w["extra_bytes"], "threads": w["threads"]})
            print(f"round {k + 1}/{args.pairs} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return processes


def _worker_args(args: argparse.Namespace) -> list[str]:
    return ["--threads", str(args.threads), "--runs", str(args.runs), "--repeats", str(args.repeats),
            "--slowdown", str(args.slowdown), "--memory", str(args.memory)]


def session_pairs(processes: list[dict]) -> dict[str, list[tuple[dict, dict]]]:
    """(baseline, candidate) process pairs: A/B the A and B of each A/B pair, A/A the
    two processes of each same-code pair (in the order they were started)."""
    out: dict[str, list[tuple[dict, dict]]] = {"A/A": [], "A/B": []}
    for k in sorted({p["pair"] for p in processes}):
        for kind in out:
            pair = sorted((p for p in processes if p["pair"] == k and p["kind"] == kind), key=lambda p: p["order"])
            if pair:
                x, y = pair
                out[kind].append((y, x) if kind == "A/B" and x["variant"] == "B" else (x, y))
    return out


def _records(pairs_: list[tuple[dict, dict]], plan: tuple[int, ...]):
    """The pairs as the run records `effbench ab` would store (tags and all)."""
    import uuid

    from effbench.gate.options import looks_tag
    from effbench.metrics.catalog import make_metric
    from effbench.metrics.record import RunRecord, Source

    def record(p: dict, side: str, k: int) -> RunRecord:
        metrics = [make_metric("latency.tpot_s", p["tpot"], Source.TIMER, [p["tpot"]]),
                   make_metric("memory.peak_bytes", p["peak"], Source.SAMPLED, [p["peak"]])]
        return RunRecord(uuid.uuid4().hex, f"2026-01-01T00:00:{k:02d}", "ok", "inference", "inference", "tiny-llama",
                         "fp32", {}, "gate-power", {"label": "this machine"}, {}, 0, metrics,
                         tags=["ab:gate-power", f"side:{side}", f"pair:{k}", looks_tag(plan)])

    return ([record(b, "A", k) for k, (b, _) in enumerate(pairs_)],
            [record(c, "B", k) for k, (_, c) in enumerate(pairs_)])


def replay(pairs_: list[tuple[dict, dict]], plan: tuple[int, ...], gate):
    """A live session over these pairs: gated at each planned look, stopped once decided."""
    from effbench.gate.process_gate import evaluate_processes

    for n in plan:
        base, cand = _records(pairs_[:n], plan)
        result = evaluate_processes(base, cand, gate, ended=n == plan[-1])
        if result.decided or n == plan[-1]:
            return result, n
    raise AssertionError("unreachable: the last planned look ends the session")


def gate_rates(pairs_: list[tuple[dict, dict]], plan: tuple[int, ...], gate, sessions: int, seed: int,
               exchangeable: bool) -> dict:
    """Verdict shares over `sessions` sessions, each a random subset of the measured
    pairs in random order (pairs are independent draws of the process lottery;
    drawing without replacement never repeats one, which would fake a small spread),
    plus the same over the disjoint blocks of measured pairs in time order.
    `exchangeable` (A/A): each drawn pair's two sides swap at random, so the drawn
    log ratios are symmetric about 0, as they are for the same code on both sides;
    without it the pool's own mean, never exactly 0, would act as a true change."""
    import numpy as np

    from effbench.gate.stats import Verdict

    rng = np.random.default_rng(seed)

    def tally(draws):
        out = {m: {v: 0 for v in Verdict} for m in ("latency.tpot_s", "memory.peak_bytes")}
        sizes = []
        for session in draws:
            result, n = replay(session, plan, gate)
            sizes.append(n)
            for c in result.checks:
                out[c.metric][c.verdict] += 1
        total = max(len(sizes), 1)
        return {m: {v.value: k / total for v, k in counts.items()} for m, counts in out.items()} | {
            "n": len(sizes), "pairs_median": float(np.median(sizes)) if sizes else math.nan}

    def draw(i: int) -> tuple[dict, dict]:
        b, c = pairs_[i]
        return (c, b) if exchangeable and rng.random() < 0.5 else (b, c)

    boot = [[draw(i) for i in rng.permutation(len(pairs_))[:plan[-1]]] for _ in range(sessions)]
    blocks = [pairs_[i:i + plan[-1]] for i in range(0, len(pairs_) - plan[-1] + 1, plan[-1])]
    return {"resampled": tally(boot), "measured blocks": tally(blocks)}


def analyse_ab(processes: list[dict], args: argparse.Namespace, elapsed: float, load: float,
               same_code_from: list[dict] | None = None) -> str:
    from effbench.gate import gate_from_dict
    from effbench.gate.config import DEFAULT_TOLERANCES
    from effbench.gate.process_stats import detectable_change, plan_looks, processes_needed

    by = session_pairs(processes)
    if same_code_from is not None:  # --aa-from: the same-code pairs of another measurement
        by["A/A"] = session_pairs(same_code_from)["A/A"]
    a = [x for x, _ in by["A/B"]]
    b = [y for _, y in by["A/B"]]
    wall = statistics.mean(p["wall_s"] for p in processes)
    tol_mem = DEFAULT_TOLERANCES["memory.peak_bytes"]

    def log_sd(pairs_, key):
        return statistics.stdev(math.log(c[key] / b_[key]) for b_, c in pairs_)

    def cv(ps, key):
        values = [p[key] for p in ps]
        return statistics.stdev(values) / statistics.mean(values)

    achieved = {k: statistics.median(p[k] for p in b) / statistics.median(p[k] for p in a) - 1
                for k in ("tpot", "peak")}
    paired_tpot = math.expm1(statistics.mean(math.log(c["tpot"] / b_["tpot"]) for b_, c in by["A/B"]))
    lines = [
        "## Setup", "",
        f"- {len(processes)} worker processes in {len({p['pair'] for p in processes})} rounds of "
        f"{' and '.join(KIND_HOW[k] for k in sorted({p['kind'] for p in processes}, reverse=True))}, "
        f"each pair's two processes {INTERLEAVE_HOW[args.interleave]}; one run each: "
        f"1 warm-up, {args.repeats} measured repeats; tiny-llama (3.4M parameters), prompt {PROMPT}, {OUTPUT} output "
        f"tokens, torch threads {processes[0]['threads']}, PYTHONHASHSEED={args.hash_seed}"
        f"{f', pinned to CPUs {args.cpus}' if args.cpus else ''}; {elapsed:.0f} s in all ({wall:.1f} s per process, "
        f"start-up included); load average {load:.1f} at the end, on {os.cpu_count()} cores.",
        f"- Injected in B: a busy-wait of {statistics.mean(p['factor'] for p in b):.3f} × each forward's CPU time "
        f"(+{args.slowdown:.0%} decode work) and {statistics.mean(p['extra_bytes'] for p in b) / 2**20:.1f} MiB held "
        f"per repeat. Achieved, median B / median A: TPOT {achieved['tpot']:+.1%}, peak RSS {achieved['peak']:+.1%}; "
        f"within the A/B pairs (geometric mean of B / A, what the paired test sees): TPOT {paired_tpot:+.1%}.",
        f"- Between-process spread of the process medians: TPOT CV {cv(a, 'tpot'):.1%} (A), {cv(b, 'tpot'):.1%} (B); "
        f"sd of the log ratio of a pair's processes: A/B {log_sd(by['A/B'], 'tpot'):.1%}, A/A "
        f"{log_sd(by['A/A'], 'tpot'):.1%} ({len(by['A/B'])} and {len(by['A/A'])} pairs); peak RSS CV "
        f"{cv(a, 'peak'):.2%}.",
    ]
    if same_code_from is not None:
        lines.append(f"- The A/A (same-code) pairs: {len(by['A/A'])} pairs of other measurements with the same "
                     f"model and settings ({', '.join(args.aa_from)}).")
    sd = log_sd(by["A/A"], "tpot")
    for n in args.budgets:
        mdc = math.expm1(detectable_change(sd, n, n, 0.05, 0.95, paired=True))
        lines.append(f"- At that spread this runner resolves ≥ {mdc:.1%} TPOT changes at 95% power with {n} pairs "
                     "(one look at alpha 0.05).")
    for tol in args.tolerances:
        need = processes_needed(math.log1p(tol), sd, 0.05, 0.95, paired=True, test="t")
        lines.append(f"- A TPOT tolerance of +{tol:.1%} needs ≈ {need} processes per side (one look at alpha 0.05).")
    lines += ["", f"## The process-level gate (`effbench ab` defaults: paired t-test on log ratios, alpha 0.05 with "
                  "O'Brien–Fleming-type spending over 4 planned looks, power 0.95; peak memory "
                  f"+{tol_mem:.0%})", "",
              "Each check in a gate of its own, so that a session's length is its own: in one gate with both, "
              "an A/B session ends at the first look that shows the memory regression, before TPOT could be "
              f"decided. {args.sessions} sessions per row, each a random subset of the measured pairs (A/A: each "
              "pair's sides swapped at random), and, in brackets with their count, the disjoint blocks of measured "
              "pairs in time order.", "",
              "| tolerance | budget (pairs) | check | A/A false alarm | A/A pass | A/B detection "
              "| A/B inconclusive | median pairs A/A, A/B | minutes per gate A/A, A/B |",
              "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    checks = [("latency.tpot_s", tol) for tol in args.tolerances] + [("memory.peak_bytes", tol_mem)]
    for metric, tol in checks:
        gate = gate_from_dict({"metrics": {metric: f"+{tol * 100:g}%"}}, "gate_power")
        for budget in args.budgets:
            if budget > len(by["A/A"]):
                lines.append(f"| +{tol:.1%} | {budget} | more pairs than the {len(by['A/A'])} measured A/A pairs: "
                             "measure more (--pairs) | | | | | | |")
                continue
            plan = plan_looks(min(args.min, budget), budget, args.looks)
            rates = {kind: gate_rates(by[kind], plan, gate, args.sessions, args.seed, kind == "A/A")
                     for kind in ("A/A", "A/B")}

            def cell(kind, verdict):
                r, m = rates[kind]["resampled"], rates[kind]["measured blocks"]
                blocks = f" [{m[metric][verdict]:.0%} of {m['n']}]" if m["n"] else ""
                return f"{r[metric][verdict]:.1%}{blocks}"
            sizes = [rates[k]["resampled"]["pairs_median"] for k in ("A/A", "A/B")]
            minutes = [2 * n * wall / 60 for n in sizes]
            lines.append(f"| +{tol:.1%} | {budget} | `{metric}` | {cell('A/A', 'regression')} | "
                         f"{cell('A/A', 'pass')} | {cell('A/B', 'regression')} | {cell('A/B', 'inconclusive')} | "
                         f"{sizes[0]:g}, {sizes[1]:g} | {minutes[0]:.1f}, {minutes[1]:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["ab", "repeats"], default="ab",
                    help="ab: one run per process, the process-level gate (default); repeats: the earlier analysis")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker (default 1; 0 = torch's default). On a shared, oversubscribed "
                         "machine two OpenMP threads spin at every barrier and per-token times swing tenfold")
    ap.add_argument("--repeats", type=int, default=10, help="measured repeats per run")
    ap.add_argument("--slowdown", type=float, default=0.10)
    ap.add_argument("--memory", type=float, default=0.04)
    ap.add_argument("--quick", action="store_true", help="a few processes: checks the script, measures nothing")
    ap.add_argument("--save", metavar="JSON", help="also write every figure here")
    ap.add_argument("--analyse", metavar="JSON", help="analyse figures saved by --save instead of measuring")
    ap.add_argument("--aa-from", metavar="JSON", nargs="+",
                    help="with --analyse: the same-code (A/A) pairs from these saved measurements (same model and "
                         "settings) instead")
    ab = ap.add_argument_group("mode ab")
    ab.add_argument("--pairs", type=int, default=60, help="A and B processes each (default 60)")
    ab.add_argument("--hash-seed", type=int, default=0, help="PYTHONHASHSEED of every worker (default 0)")
    ab.add_argument("--cpus", help="pin every worker to these CPUs (e.g. 0-1)")
    ab.add_argument("--kinds", nargs="+", choices=["A/B", "A/A"], default=["A/B", "A/A"],
                    help="the pairs each round measures (default both)")
    ab.add_argument("--interleave", choices=["windows", "processes"], default="windows",
                    help="a pair's two processes: windows taking turns (default, as effbench ab) or one after "
                         "the other")
    ab.add_argument("--min", type=int, default=5, help="pairs at the first planned look (default 5, as effbench ab)")
    ab.add_argument("--looks", type=int, default=4, help="planned looks (default 4, as effbench ab)")
    ab.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40], help="pairs at the last look")
    ab.add_argument("--tolerances", type=float, nargs="+", default=[0.05, 0.075], help="TPOT tolerances")
    ab.add_argument("--sessions", type=int, default=200, help="resampled sessions per row (default 200)")
    ab.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    rep = ap.add_argument_group("mode repeats")
    rep.add_argument("--processes", type=int, default=4)
    rep.add_argument("--runs", type=int, default=10, help="A runs (and B runs) per process")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=["A", "B"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.processes, args.runs, args.repeats = 2, 2, 5
        args.pairs, args.budgets, args.min, args.looks, args.sessions = 4, [3], 2, 2, 20
    if args.worker:
        Path(args.worker).write_text(json.dumps(worker(args)))
        return
    if args.analyse:
        saved = json.loads(Path(args.analyse).read_text())
        if saved.get("mode", "repeats") == "ab":
            vars(args).update(saved["settings"])
            same_code = ([p | {"pair": (i, p["pair"])} for i, f in enumerate(args.aa_from)
                          for p in json.loads(Path(f).read_text())["processes"]] if args.aa_from else None)
            print(analyse_ab(saved["processes"], args, saved["elapsed"], saved["load"], same_code))
        else:
            print(analyse(saved["processes"], saved["repeats"], saved["elapsed"], saved.get("load")))
        return
    started = time.perf_counter()
    if args.mode == "ab":
        processes = measure_ab(args)
    else:
        processes = []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.processes):
                out = Path(tmp, f"w{i}.json")
                subprocess.run([sys.executable, __file__, "--worker", str(out), *_worker_args(args)], check=True)
                processes.append(json.loads(out.read_text()))
                print(f"worker {i + 1}/{args.processes} done ({time.perf_counter() - started:.0f} s)",
                      file=sys.stderr)
    elapsed, load = time.perf_counter() - started, os.getloadavg()[0]
    if args.save:
        settings = {k: getattr(args, k) for k in ("repeats", "hash_seed", "cpus", "slowdown", "interleave")}
        Path(args.save).write_text(json.dumps({"mode": args.mode, "processes": processes, "repeats": args.repeats,
                                               "elapsed": elapsed, "load": load, "settings": settings}))
    if args.mode == "ab":
        if "A/A" in args.kinds:
            print(analyse_ab(processes, args, elapsed, load))
        else:
            print("no same-code pairs measured (--kinds A/B): analyse with --analyse SAVED --aa-from OTHER.json")
    else:
        print(analyse(processes, args.repeats, elapsed, load))


if __name__ == "__main__":
    main()
