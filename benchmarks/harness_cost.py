"""What one model × technique pair costs beyond its measurement, effbench against a peer.

The pair: a 4-layer tiny Llama (effbench's built-in tiny-llama, 3.4M parameters) saved
with save_pretrained to a directory and loaded by path, fp32 on the CPU, batch 1,
prompt 128 tokens, 32 new tokens, 1 warm-up, 5 timed repeats. Its tokenizer is a
384-token byte-level BPE trained with `tokenizers` on `pydoc_data.topics` (the same
vocabulary size as effbench's byte tokenizer, so the model has the same shape): the
ByT5 tokenizer files transformers 5 saves do not load in transformers 4 (its
`extra_special_tokens` is a list there), and every harness must read the same directory.

Each round runs, one after another in fresh processes (A B C … A B C … over rounds; a first
round, discarded, warms the file cache and effbench's probe cache):
  effbench            one `effbench run model=hf model.id=DIR ...` (default launcher)
  effbench sweep      one `effbench run --multirun seed=0,1,...` of --pairs pairs, all in
                      this one process (Hydra's basic launcher); cost divided by pairs
  effbench isolated   the same sweep with hydra/launcher=isolated (each pair a fresh process)
  bare (effbench venv) a bare generate() loop on the same model: no tracking
  import              `python -c "import effbench.execute"` (target ≤ 3 s)
  optimum-benchmark   one process of optimum-benchmark 0.6.0 (only with --peer-python)
  optimum-benchmark sweep  one process launching --pairs benchmarks of the pair (each in a
                      fresh process, by its default launcher); cost divided by pairs
  bare (peer venv)    the same bare loop in the peer's venv (its transformers version)

Per-pair fixed cost = process wall − measured windows, where the measured windows are
the timed repeats whose latencies become the harness's figures: for effbench the sum of
the record's per-repeat `latency.e2e_s` samples (read from the stored record); for
optimum-benchmark the sum of its per-call `generate` latencies; for the bare loop its
timed generate() calls. Warm-up, model load, imports, FLOP counting, perplexity and the
store write are all fixed cost. For effbench the table also gives wall − `duration_s`
(the record's own clock): what the process spends outside `execute`'s run.
Decode tok/s: batch·(new tokens − 1) / (e2e − time to first token), per repeat, median;
the bare loop's time to first token is the median of generate(max_new_tokens=1).
Each harness is compared with the bare loop in its own venv, in the same round.

The peer measures latency only (its default trackers, iterations=5, duration=0,
warmup_runs=1), while effbench's pair also measures energy, memory, FLOPs and held-out
perplexity: the comparison is conservative for effbench.

Peer venv (outside the repo; nothing of it is committed):
    python3 -m venv /work/peer-venvs/optimum
    /work/peer-venvs/optimum/bin/pip install torch==2.13.0
    /work/peer-venvs/optimum/bin/pip install optimum-benchmark==0.6.0 transformers==4.57.6 \\
        datasets==4.3.0 huggingface_hub==0.36.2 codecarbon tokenizers
(optimum-benchmark 0.6.0 fails to import on transformers 5; it runs the local directory
offline with HF_HUB_OFFLINE=1, which this script sets.)

Run (a benchmark, not a test; take figures on a quiet machine, decode tok/s varies
±50% on shared cores):
    .venv/bin/python benchmarks/harness_cost.py [--rounds 5] [--pairs 3] \\
        [--peer-python /work/peer-venvs/optimum/bin/python] [--quick]
Without --peer-python it measures effbench only. Targets: effbench's fixed cost per
pair ≤ ⅓ of optimum-benchmark's, like with like (one pair per process against one; a
sweep, either launcher, against the peer's sweep of as many pairs); `import effbench.execute` ≤ 3 s; decode tok/s within
3% of the bare loop in the same venv.

This file also runs as a worker in a harness's venv (`_worker bare|optimum DIR OUT PAIRS`),
so its module level imports only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BATCH, PROMPT, NEW_TOKENS, WARMUP, REPEATS = 1, 128, 32, 1, 5
VOCAB = 384  # effbench's byte tokenizer's size: the saved model has tiny-llama's exact shape
REPO = Path(__file__).resolve().parent.parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# --- workers: run inside a harness's venv -------------------------------------------------


def bare_loop(model_dir: str) -> dict:
    """generate() on the saved model, no streamer and no tracker: the venv's own speed."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (BATCH, PROMPT), generator=torch.Generator().manual_seed(0))
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)

    def timed(tokens: int) -> float:
        t0 = time.perf_counter()
        model.generate(**kw, max_new_tokens=tokens, min_new_tokens=tokens)
        return time.perf_counter() - t0

    with torch.inference_mode():
        for _ in range(WARMUP):
            timed(NEW_TOKENS)
        prefill = [timed(1) for _ in range(REPEATS)]
        e2e = [timed(NEW_TOKENS) for _ in range(REPEATS)]
    ttft = statistics.median(prefill)
    return {"windows_s": sum(e2e) + sum(prefill),
            "decode_tok_s": [BATCH * (NEW_TOKENS - 1) / (t - ttft) for t in e2e]}


def optimum_pairs(model_dir: str, pairs: int) -> dict:
    """`pairs` optimum-benchmark runs of the pair in one process, configured like effbench's
    (latency tracker only), each through its default launcher (a fresh process per benchmark)."""
    from optimum_benchmark import Benchmark, BenchmarkConfig, InferenceConfig, ProcessConfig, PyTorchConfig

    cfg = BenchmarkConfig(
        name="harness_cost",
        launcher=ProcessConfig(device_isolation=False),
        scenario=InferenceConfig(latency=True, memory=False, energy=False, iterations=REPEATS, duration=0,
                                 warmup_runs=WARMUP, input_shapes={"batch_size": BATCH, "sequence_length": PROMPT},
                                 generate_kwargs={"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}),
        backend=PyTorchConfig(model=model_dir, device="cpu", task="text-generation"),
    )
    reports = [Benchmark.launch(cfg) for _ in range(pairs)]
    return {"windows_s": sum(sum(r.generate.latency.values) for r in reports),
            "decode_tok_s": [BATCH * (NEW_TOKENS - 1) / t for r in reports for t in r.decode.latency.values]}


WORKERS = {"bare": lambda model_dir, pairs: bare_loop(model_dir), "optimum": optimum_pairs}
ROWS = ("effbench", "effbench sweep", "effbench isolated", "bare (effbench venv)", "import", "optimum-benchmark",
        "optimum-benchmark sweep", "bare (peer venv)")


# --- the benchmark: runs in effbench's venv --------------------------------------------------


@dataclass
class Sample:
    """One process (or one isolated sweep) of one round."""

    wall_s: float
    windows_s: float  # inside the harness's timed repeats
    pairs: int = 1
    duration_s: float | None = None  # effbench only: the records' own clock
    decode_tok_s: float | None = None  # median over repeats

    @property
    def fixed_s(self) -> float:
        return (self.wall_s - self.windows_s) / self.pairs

    @property
    def outside_record_s(self) -> float | None:
        return None if self.duration_s is None else (self.wall_s - self.duration_s) / self.pairs


def build_model_dir(path: Path) -> None:
    """effbench's tiny-llama with a BPE vocabulary, saved where every harness loads it."""
    import pydoc_data.topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from effbench.config.schema import BuiltinModelConfig
    from effbench.models import load_model

    path.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(pydoc_data.topics.topics.values(), trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(path / "tokenizer.json"))
    # Written by hand, not by save_pretrained: transformers 4 and 5 both read this minimal form.
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 1024}))
    loaded = load_model(BuiltinModelConfig(name="tiny-llama", tokenizer=f"hf:{path}"))
    loaded.model.save_pretrained(path)


class Runner:
    """Starts each harness's process, times it from outside and reads what it measured."""

    def __init__(self, work: Path, model_dir: Path, peer_python: str | None, pairs: int):
        self.work, self.model_dir, self.peer_python, self.pairs = work, model_dir, peer_python, pairs
        self.store_url = f"sqlite:///{work / 'store.db'}"
        self.count = 0

    def _run(self, cmd: list[str], effbench_env: bool) -> float:
        self.count += 1
        env = {**os.environ, **OFFLINE}
        if effbench_env:  # measure this checkout's effbench, not whichever one is installed
            env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        log = self.work / f"process-{self.count}.log"
        t0 = time.perf_counter()
        with log.open("w") as f:
            rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=self.work).returncode
        wall = time.perf_counter() - t0
        if rc != 0:
            tail = "\n".join(log.read_text().splitlines()[-25:])
            sys.exit(f"{' '.join(cmd[:4])} ... exited {rc}; last lines of {log}:\n{tail}")
        return wall

    def _effbench(self, extra: list[str], multirun: bool = False) -> float:
        return self._run([sys.executable, "-m", "effbench.cli", "run", *(["--multirun"] if multirun else []),
                          "model=hf", f"model.id={self.model_dir}",
                          f"scenario.batch_size={BATCH}", f"scenario.prompt_tokens={PROMPT}",
                          f"scenario.output_tokens={NEW_TOKENS}", f"scenario.warmup={WARMUP}",
                          f"scenario.repeats={REPEATS}", "hardware.device=cpu", f"store.url={self.store_url}",
                          "rerun=true", *extra], effbench_env=True)

    def _records(self, out_dir: Path) -> Sample:
        from effbench.store import open_store

        ids = [p.read_text() for p in sorted(out_dir.rglob("effbench_run_id"))]
        store = open_store(self.store_url, read_only=True)
        records = [store.get(i) for i in ids]
        for r in records:
            if r.status.value != "ok":
                sys.exit(f"effbench run {r.id} is {r.status.value}: {r.error}")
        decode = [s for r in records for s in r.metric("throughput.decode_tokens_per_s").samples]
        return Sample(0.0, sum(sum(r.metric("latency.e2e_s").samples) for r in records), pairs=len(records),
                      duration_s=sum(r.duration_s for r in records), decode_tok_s=statistics.median(decode))

    def effbench_default(self) -> Sample:
        out = self.work / f"run-{self.count}"
        wall = self._effbench([f"hydra.run.dir={out}"])
        sample = self._records(out)
        sample.wall_s = wall
        return sample

    def effbench_sweep(self, launcher: list[str]) -> Sample:
        """`--pairs` pairs (seeds) in one `--multirun`: the default launcher runs them in this
        one process, `isolated` each in a fresh one."""
        out = self.work / f"sweep-{self.count}"
        seeds = ",".join(str(s) for s in range(self.pairs))
        wall = self._effbench([*launcher, f"seed={seeds}", f"hydra.sweep.dir={out}"], multirun=True)
        sample = self._records(out)
        if sample.pairs != self.pairs:
            sys.exit(f"the sweep in {out} stored {sample.pairs} runs, expected {self.pairs}")
        sample.wall_s = wall
        return sample

    def worker(self, kind: str, python: str, pairs: int = 1) -> Sample:
        out = self.work / f"{kind}-{self.count}.json"
        wall = self._run([python, str(Path(__file__).resolve()), "_worker", kind, str(self.model_dir), str(out),
                          str(pairs)], effbench_env=python == sys.executable)
        got = json.loads(out.read_text())
        return Sample(wall, got["windows_s"], pairs=pairs, decode_tok_s=statistics.median(got["decode_tok_s"]))

    def import_execute(self) -> Sample:
        return Sample(self._run([sys.executable, "-c", "import effbench.execute"], effbench_env=True), 0.0)


def spread(values: list[float], fmt: str = ".2f") -> str:
    if not values:
        return ""
    med = format(statistics.median(values), fmt)
    return med if len(values) == 1 else f"{med} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def report(rows: dict[str, list[Sample]], args: argparse.Namespace) -> None:
    from rich.table import Table

    from effbench.report import console

    title = (f"harness cost per pair: tiny Llama (3.4M) from a directory, CPU fp32, batch {BATCH}, prompt {PROMPT}, "
             f"{NEW_TOKENS} new tokens, {WARMUP} warm-up + {REPEATS} repeats; {args.rounds} round(s), "
             "median (min–max over rounds)")
    table = Table(title=title)
    for col in ("harness", "pairs/process", "process wall s", "in windows s", "fixed cost/pair s (wall − windows)",
                "outside record s (wall − duration_s)", "decode tok/s", "decode ÷ bare, same venv"):
        table.add_column(col)
    bare_of = {"effbench": "bare (effbench venv)", "effbench sweep": "bare (effbench venv)",
               "effbench isolated": "bare (effbench venv)", "optimum-benchmark": "bare (peer venv)",
               "optimum-benchmark sweep": "bare (peer venv)"}
    for name, samples in rows.items():
        if not samples or name == "import":  # a process without a pair: in the targets below
            continue
        outside = [s.outside_record_s for s in samples if s.outside_record_s is not None]
        decode = [s.decode_tok_s for s in samples if s.decode_tok_s is not None]
        ratio = ([s.decode_tok_s / b.decode_tok_s for s, b in zip(samples, rows[bare_of[name]])]
                 if name in bare_of and decode else [])
        table.add_row(name, str(samples[0].pairs), spread([s.wall_s for s in samples]),
                      spread([s.windows_s for s in samples]), spread([s.fixed_s for s in samples]),
                      spread(outside), spread(decode, ".1f"), spread(ratio, ".3f"))
    console.print(table)

    targets = Table(title="targets (per round, then median and range)")
    for col in ("figure", "value", "target"):
        targets.add_column(col)
    # Like with like: one pair per process against one; a sweep against the peer's sweep of as
    # many pairs in one process (which, by its default launcher, runs each in a fresh process).
    for name, peer_name in (("effbench", "optimum-benchmark"), ("effbench sweep", "optimum-benchmark sweep"),
                            ("effbench isolated", "optimum-benchmark sweep")):
        if peer := rows[peer_name]:
            targets.add_row(f"{name} fixed cost ÷ {peer_name}'s",
                            spread([s.fixed_s / p.fixed_s for s, p in zip(rows[name], peer)], ".3f"), "≤ 0.333")
        ratio = [s.decode_tok_s / b.decode_tok_s for s, b in zip(rows[name], rows["bare (effbench venv)"])]
        targets.add_row(f"{name} decode tok/s ÷ bare generate()", spread(ratio, ".3f"), "≥ 0.97")
    targets.add_row("import effbench.execute, process wall s", spread([s.wall_s for s in rows["import"]]), "≤ 3 s")
    console.print(targets)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "_worker":
        _, _, kind, model_dir, out, pairs = sys.argv
        Path(out).write_text(json.dumps(WORKERS[kind](model_dir, int(pairs))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=3, help="pairs in each sweep row (default 3)")
    ap.add_argument("--peer-python", help="python of a venv with optimum-benchmark 0.6.0 (see above)")
    ap.add_argument("--quick", action="store_true", help="one round, 2-pair sweeps")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.pairs = 1, 2
    if args.rounds < 1 or args.pairs < 1:
        ap.error("--rounds and --pairs must be ≥ 1")
    if args.peer_python and not Path(args.peer_python).is_file():
        ap.error(f"--peer-python {args.peer_python}: no such file")

    with tempfile.TemporaryDirectory(prefix="harness_cost-") as tmp:
        work = Path(tmp)
        build_model_dir(work / "model")
        runner = Runner(work, work / "model", args.peer_python, args.pairs)
        steps = {
            "effbench": runner.effbench_default,
            "effbench sweep": lambda: runner.effbench_sweep([]),
            "effbench isolated": lambda: runner.effbench_sweep(["hydra/launcher=isolated"]),
            "bare (effbench venv)": lambda: runner.worker("bare", sys.executable),
            "import": runner.import_execute,
        }
        if args.peer_python:
            steps["optimum-benchmark"] = lambda: runner.worker("optimum", args.peer_python)
            steps["optimum-benchmark sweep"] = lambda: runner.worker("optimum", args.peer_python, args.pairs)
            steps["bare (peer venv)"] = lambda: runner.worker("bare", args.peer_python)
        rows: dict[str, list[Sample]] = {name: [] for name in ROWS}
        # Round 0 is discarded: it fills the OS file cache, writes .pyc files and effbench's
        # probe cache (results/cache under the temporary working directory), as any earlier run would.
        for k in range(args.rounds + 1):
            for name, step in steps.items():
                sample = step()
                if k:
                    rows[name].append(sample)
                label = f"round {k}/{args.rounds}" if k else "warm-up round (discarded)"
                print(f"{label} {name}: {sample.wall_s:.1f} s wall", flush=True)
        report(rows, args)


if __name__ == "__main__":
    main()
