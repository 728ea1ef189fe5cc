"""How good is `effbench gate`? False alarms on A/A, detection on A/B, measured.

Runs the tiny model (tiny-llama, 3.4M parameters) on this machine:

- A: the same code, run after run;
- B: a known regression: the model's forward hook sleeps (then spins the last
  fraction of a millisecond, for precision) a fixed share of each forward's own
  time, calibrated so TPOT grows by --slowdown (default 10%); and a buffer of
  --memory (default 4%) of the process's peak RSS held during each repeat.

Each *run* is what `effbench run` measures: one warm-up generate, then
--repeats measured generates (effbench's TokenTimer and CPU memory tracker), so
a run gives one sample per repeat of `latency.tpot_s` and `memory.peak_bytes`.
Runs alternate A, B, B, A, ... in --processes separate worker processes, one
after the other, so the cross-process pairs see what CI sees: baseline and
candidate measured by different processes at different times.

The gate's own test (effbench.gate.stats.compare_samples) is then applied to
A/A and A/B sample pairs: false-alarm rate = share of A/A checks called
regression, detection rate = share of A/B checks called regression. Also a grid
over repeats, tolerance and alpha to tune the defaults.

    .venv/bin/python benchmarks/gate_power.py                # ~5-10 min on 2 shared cores
    .venv/bin/python benchmarks/gate_power.py --quick        # a smoke test of the script
    .venv/bin/python benchmarks/gate_power.py --save s.json  # keep every sample; --analyse s.json re-reads them
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT, OUTPUT = 64, 32


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
    runs = []
    for i in range(args.runs):
        order = ("A", "B") if i % 2 == 0 else ("B", "A")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--runs", type=int, default=10, help="A runs (and B runs) per process")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker (default 1; 0 = torch's default). On a shared, oversubscribed "
                         "machine two OpenMP threads spin at every barrier and per-token times swing tenfold")
    ap.add_argument("--repeats", type=int, default=10, help="measured repeats per run (analysed at 3, 5 and this)")
    ap.add_argument("--slowdown", type=float, default=0.10)
    ap.add_argument("--memory", type=float, default=0.04)
    ap.add_argument("--quick", action="store_true", help="2 processes × 2 runs: checks the script, measures nothing")
    ap.add_argument("--save", metavar="JSON", help="also write every sample here")
    ap.add_argument("--analyse", metavar="JSON", help="analyse samples saved by --save instead of measuring")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.processes, args.runs, args.repeats = 2, 2, 5
    if args.worker:
        Path(args.worker).write_text(json.dumps(worker(args)))
        return
    if args.analyse:
        saved = json.loads(Path(args.analyse).read_text())
        print(analyse(saved["processes"], saved["repeats"], saved["elapsed"], saved.get("load")))
        return
    started = time.perf_counter()
    processes = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = Path(tmp, f"w{i}.json")
            cmd = [sys.executable, __file__, "--worker", str(out), "--threads", str(args.threads), "--runs",
                   str(args.runs), "--repeats", str(args.repeats), "--slowdown", str(args.slowdown),
                   "--memory", str(args.memory)]
            subprocess.run(cmd, check=True)
            processes.append(json.loads(out.read_text()))
            print(f"worker {i + 1}/{args.processes} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    elapsed, load = time.perf_counter() - started, os.getloadavg()[0]
    if args.save:
        Path(args.save).write_text(json.dumps({"processes": processes, "repeats": args.repeats, "elapsed": elapsed,
                                               "load": load}))
    print(analyse(processes, args.repeats, elapsed, load))


if __name__ == "__main__":
    main()
