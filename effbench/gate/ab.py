"""`effbench ab`: measure two sides in interleaved fresh processes, then gate them.

On shared machines a process's speed is a random draw and the machine's speed
changes from second to second (docs/results/gate_power.md), so the process is the
unit of measurement: N fresh `effbench run` processes per side, pair by pair (A B,
then B A, …). The two processes of a pair run at once but never together: their
measured windows take turns A B B A … (effbench/turns.py), so both sides see the
machine at the same moments and its speed cancels in the pair's ratio
(`--interleave processes`: one whole process after the other). Each has the same
hash seed, thread settings and CPU pinning; each run is tagged `ab:<session>`,
`side:A|B`, `pair:<k>` and the session's planned looks (`ab-looks:5/10/15/20`), all in one
store. After each planned look the runs are gated (effbench.gate.process_gate);
the session stops once decided or at its budget (pairs or minutes). A later
`effbench gate --match ab` over the same runs replays the same looks.

Sides (A is the baseline, B the candidate):

    config:OVERRIDES   this checkout with these Hydra overrides
    path:DIR           a checkout with its own .venv (DIR/.venv/bin/python)
    path:EXE           a python with effbench installed, or an effbench executable
    ref:REV            a git revision of this repository: a worktree at that commit,
                       installed into its own venv (`make install`, else venv + pip)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from effbench.gate.cli import EXIT_USAGE, add_gate_file_arguments, load_gate_options, report
from effbench.gate.options import PAIR_TAG, SESSION_TAG, SIDE_TAG, looks_tag

SIDE_KINDS = ("config", "path", "ref")
INTERLEAVE = ("windows", "processes")
# Keys `effbench ab` sets itself on every process: same for both sides by construction.
OWN_KEYS = ("store.url", "tags", "rerun", "hardware.threads", "hydra.run.dir")
INSTALLED_MARK = ".effbench-ab-installed"
TORCH_PIN = "torch==2.13.0"  # first, from the CPU wheel: a plain `torch` would pull a CUDA build

HELP = """\
Measure two sides in fresh processes, pair by pair, one short `effbench run`
each, same hash seed, threads and CPU pinning, all stored in one store. A pair's
two processes run at once but never together: their measured windows take turns
(A B B A ...), so both see the machine at the same moment and the machine's
speed of that moment cancels in the pair's ratio (--interleave processes: one
whole process after the other). Then gate them: one median per process, each A
process paired with its B process, a t-test (or sign-flip permutation test) on
the log ratios with the tolerance as margin. It begins at --min pairs and looks again
at planned points up to --max (O'Brien-Fleming-type alpha spending: valid,
no peeking), stopping once decided or out of --minutes. A check the runner
cannot resolve at its tolerance is inconclusive ("runner too noisy"), with
the processes it would need; the summary says what the runner resolves.

Sides (A = baseline, B = candidate):
  config:'OVERRIDES'  this checkout with these Hydra overrides
  path:DIR            a checkout with its own .venv;  path:EXE  a python or effbench executable
  ref:REV             a git revision: a worktree at that commit, installed into its own venv

OVERRIDEs after the sides apply to both (options go before the sides or after the
last override). Exit code: 0 pass (inconclusive checks
warn), 1 regression (or inconclusive with --strict), 2 bad side, unknown ref,
failed install or bad config. Re-read the session later with the command it prints
(effbench gate --match ab).

Examples:
  effbench ab ref:origin/main ref:HEAD model=tiny-llama scenario.output_tokens=32 --max 20 --minutes 30
  effbench ab config:'technique=fp32' config:'technique=bf16' scenario.repeats=5 --min 5 --max 15
  effbench ab path:../main-checkout path:. --gate examples/ci/effbench-gate.yaml --strict
"""


class AbError(ValueError):
    """A side that cannot be measured (unknown ref, failed install, bad option): exit code 2."""


@dataclass(frozen=True)
class Side:
    label: str  # "A" or "B"
    spec: str  # as given
    command: tuple[str, ...]  # argv that runs `effbench run`
    cwd: Path
    overrides: tuple[str, ...]
    own_install: bool  # a ref or path side: runs its own effbench, so this process's PYTHONPATH stays out


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_step(cmd: list[str], cwd: Path, what: str) -> None:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise AbError(f"{what}: `{shlex.join(cmd)}` exited {out.returncode}:\n{_tail(out.stdout + out.stderr)}")


def install_checkout(checkout: Path, what: str) -> Path:
    """The checkout's venv python, installing it first: `make install` where the
    Makefile has that target, else a venv with torch first and the package
    constrained by requirements.lock."""
    python = checkout / ".venv" / "bin" / "python"
    mark = checkout / ".venv" / INSTALLED_MARK
    if mark.exists():
        return python
    makefile = checkout / "Makefile"
    if makefile.exists() and any(line.startswith("install:") for line in makefile.read_text().splitlines()):
        _run_step(["make", "install"], checkout, f"{what}: installing {checkout} failed")
    else:
        _run_step([sys.executable, "-m", "venv", ".venv"], checkout, f"{what}: creating a venv failed")
        pip = [str(python), "-m", "pip", "install", "-q"]
        _run_step([*pip, TORCH_PIN], checkout, f"{what}: installing {TORCH_PIN} failed")
        lock = ["-c", "requirements.lock"] if (checkout / "requirements.lock").exists() else []
        _run_step([*pip, *lock, "-e", "."], checkout, f"{what}: installing {checkout} failed")
    if not python.exists():
        raise AbError(f"{what}: installing {checkout} made no .venv/bin/python")
    mark.write_text("installed by effbench ab\n")
    return python


def _worktree(rev: str, repo: Path, workdir: Path) -> Path:
    """A worktree of `rev`'s commit under workdir (reused across sessions)."""
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise AbError(f"ref:{rev}: {repo} is not in a git repository ({_tail(top.stderr, 1)})")
    sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if sha.returncode != 0 or not sha.stdout.strip():
        raise AbError(f"ref:{rev}: no such commit in {top.stdout.strip()} (git rev-parse --verify found nothing)")
    commit = sha.stdout.strip()
    path = (workdir / "worktrees" / commit[:12]).resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        add = _git(repo, "worktree", "add", "--detach", str(path), commit)
        if add.returncode != 0:
            raise AbError(f"ref:{rev}: git worktree add failed: {_tail(add.stderr)}")
    return path


def parse_side(text: str, label: str) -> tuple[str, str]:
    kind, sep, value = text.partition(":")
    if sep and kind in SIDE_KINDS:
        return kind, value
    if Path(text).exists():
        return "path", text
    raise AbError(f"side {label} {text!r}: use config:'OVERRIDES', path:DIR, path:EXE or ref:REV")


def _check_overrides(overrides: list[str], where: str) -> None:
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in OWN_KEYS:
            raise AbError(f"{where}: {key} is set by effbench ab for every process (--db for the store, "
                          "--threads for threads); leave it out")


def resolve_side(text: str, label: str, workdir: Path) -> Side:
    """A side spec as the command that runs `effbench run` for it (installing a ref)."""
    kind, value = parse_side(text, label)
    python_cmd = ("-m", "effbench.cli", "run")
    if kind == "config":
        overrides = tuple(shlex.split(value))
        _check_overrides(list(overrides), f"side {label}")
        return Side(label, text, (sys.executable, *python_cmd), Path.cwd(), overrides, False)
    if kind == "ref":
        checkout = _worktree(value, Path.cwd(), workdir)
        python = install_checkout(checkout, f"side {label} ({text})")
        side = Side(label, text, (str(python), *python_cmd), checkout, (), True)
    else:
        path = Path(value).expanduser().resolve()
        if path.is_dir():
            python = path / ".venv" / "bin" / "python"
            if not python.exists():
                raise AbError(f"side {label} ({text}): no .venv/bin/python in {path}: install that checkout "
                              "(make install) or pass its python or effbench executable")
            side = Side(label, text, (str(python), *python_cmd), path, (), True)
        elif path.is_file() and os.access(path, os.X_OK):
            # A python runs `-m effbench.cli` from a neutral directory, so no checkout's
            # effbench/ in the current directory shadows the one installed with it.
            command = (str(path), "run") if path.name.startswith("effbench") else (str(path), *python_cmd)
            cwd = workdir.resolve()
            cwd.mkdir(parents=True, exist_ok=True)
            side = Side(label, text, command, cwd, (), True)
        else:
            raise AbError(f"side {label} ({text}): {path} is neither a checkout directory nor an executable")
    # `effbench --help` of that side (its command without the final `run`): a broken install fails here.
    probe = subprocess.run([*side.command[:-1], "--help"], cwd=side.cwd, env=side_env(side, os.environ),
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise AbError(f"side {label} ({text}): its effbench does not start:\n{_tail(probe.stdout + probe.stderr)}")
    return side


def side_env(side: Side, env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "PYTHONPATH"} if side.own_install else dict(env)


def absolute_store_url(url: str) -> str:
    """Processes run in other directories (worktrees): make a relative SQLite or JSON-directory path absolute."""
    from sqlalchemy.engine import make_url

    from effbench.store.base import scheme_of
    from effbench.store.jsondir import SCHEME, json_dir_path

    if scheme_of(url) == "json":
        return SCHEME + str(json_dir_path(url).resolve())
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)
    return url


def parse_cpus(text: str | None) -> set[int] | None:
    """'0', '0,2', '0-3' → CPU indices, each one this process may use."""
    if not text:
        return None
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise AbError(f"--cpus {text!r}: give CPU indices like 0, 0,2 or 0-3") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise AbError(f"--cpus {text!r}: this process may use CPUs {sorted(allowed)}")
    return cpus


def process_env(hash_seed: int, threads: int) -> dict[str, str]:
    """The environment every measured process shares: one string-hash seed (a
    process's speed depended on its draw) and, unless 0, one thread count."""
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def pinning(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child process to `cpus` (None: no pinning)."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


@dataclass(frozen=True)
class Settings:
    """What every process of a session shares."""

    session: str
    store_url: str
    threads: int
    hash_seed: int
    cpus: set[int] | None
    plan: tuple[int, ...]
    common: tuple[str, ...]
    logdir: Path
    interleave: str = "windows"  # or "processes" (INTERLEAVE)

    def env(self, side: Side) -> dict[str, str]:
        return side_env(side, process_env(self.hash_seed, self.threads))

    def log(self, side: Side, pair: int) -> Path:
        return self.logdir / f"{side.label}-{pair}.log"

    def argv(self, side: Side, pair: int) -> list[str]:
        tags = [f"{SESSION_TAG}{self.session}", f"{SIDE_TAG}{side.label}", f"{PAIR_TAG}{pair}",
                looks_tag(self.plan)]
        own = [f"store.url={self.store_url}", "rerun=true", f"tags=[{','.join(tags)}]",
               f"hydra.run.dir={self.logdir / f'{side.label}-{pair}'}"]
        if self.threads:
            own.append(f"hardware.threads={self.threads}")
        return [*side.command, *side.overrides, *self.common, *own]


def session_runs(settings: Settings) -> list:
    from effbench.store import StoreMissing, open_store

    try:
        with open_store(settings.store_url, read_only=True) as store:
            return store.runs(tag=f"{SESSION_TAG}{settings.session}")
    except StoreMissing:  # no process has stored a run yet
        return []


def _check_stored(side: Side, pair: int, rc: int, log: Path, settings: Settings) -> None:
    """A failed run is stored (and exits 1): the gate judges it. A process that stored
    nothing (a bad config, a broken install) means that side cannot be measured."""
    mine = {f"{SIDE_TAG}{side.label}", f"{PAIR_TAG}{pair}"}
    if rc != 0 and not any(mine <= set(r.tags) for r in session_runs(settings)):
        raise AbError(f"side {side.label} ({side.spec}): `effbench run` exited {rc} and stored no run "
                      f"(log {log}):\n{_tail(log.read_text())}")


def run_process(side: Side, pair: int, settings: Settings) -> None:
    """One `effbench run` of one side, alone on the machine (--interleave processes)."""
    log = settings.log(side, pair)
    with open(log, "w") as out:
        rc = subprocess.run(settings.argv(side, pair), cwd=side.cwd, env=settings.env(side), stdout=out,
                            stderr=subprocess.STDOUT, preexec_fn=pinning(settings.cpus)).returncode
    _check_stored(side, pair, rc, log, settings)


def run_pair_in_turns(first: Side, second: Side, pair: int, settings: Settings) -> list[Side]:
    """The pair's two `effbench run` processes at once, their measured windows taking
    turns (--interleave windows, effbench/turns.py); the sides that never took a turn
    (an effbench that predates the protocol: its run was one turn, the pair sequential)."""
    from effbench.turns import TurnProcess, run_in_turns

    procs = [TurnProcess(settings.argv(side, pair), settings.env(side), str(side.cwd),
                         str(settings.log(side, pair)), pinning(settings.cpus))
             for side in (first, second)]
    run_in_turns(*procs)
    for side, p in zip((first, second), procs):
        _check_stored(side, pair, p.returncode, Path(p.log_path), settings)
    return [side for side, p in zip((first, second), procs) if p.yields == 0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("side_a", metavar="A", help="the baseline side: config:'OVERRIDES', path:DIR|EXE or ref:REV")
    p.add_argument("side_b", metavar="B", help="the candidate side, same forms")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides for both sides")
    p.add_argument("--min", type=int, default=5, metavar="N", help="pairs (processes per side) at the first look "
                                                                   "(default 5)")
    p.add_argument("--max", type=int, default=20, metavar="N", help="pairs at the last look: the budget (default 20)")
    p.add_argument("--looks", type=int, default=4, help="planned looks from --min to --max (default 4)")
    p.add_argument("--minutes", type=float, help="time budget: no pair is started that would end past it; the "
                                                 "session then makes a final look spending the alpha left")
    p.add_argument("--threads", type=int, default=1, help="torch threads and OMP_NUM_THREADS of every process "
                                                          "(default 1; 0 leaves them alone)")
    p.add_argument("--hash-seed", type=int, default=0, help="PYTHONHASHSEED of every process (default 0)")
    p.add_argument("--cpus", help="pin every process to these CPUs (e.g. 0 or 0-1; os.sched_setaffinity)")
    p.add_argument("--interleave", choices=INTERLEAVE, default="windows",
                   help="windows (default): a pair's two processes run at once, never together, their measured "
                        "windows alternating A B B A ... so both see the machine at the same moment; processes: "
                        "one whole process after the other (for a model that cannot be held twice)")
    p.add_argument("--workdir", default="results/ab", help="logs and ref worktrees (default results/ab)")
    add_gate_file_arguments(p)


def _look_line(result, n: int, elapsed: float) -> str:
    from effbench.gate.stats import Verdict

    counts = ", ".join(f"{result.count(v)} {v.value}" for v in Verdict)
    state = "decided" if result.decided else "undecided"
    return f"effbench ab: look at {n} pairs, {elapsed / 60:.1f} min: {counts} ({state})"


def run_session(side_a: Side, side_b: Side, settings: Settings, gate, minutes: float | None,
                progress: Callable[[str], None]):
    """Interleave processes until decided or out of budget; the last gate result and pairs run."""
    from effbench.gate.process_gate import evaluate_processes
    from effbench.metrics.record import Status

    started = time.perf_counter()
    pair_seconds: list[float] = []
    n, result = 0, None
    untaken: set[str] = set()
    while True:
        order = (side_a, side_b) if n % 2 == 0 else (side_b, side_a)
        t0 = time.perf_counter()
        if settings.interleave == "windows":
            for side in run_pair_in_turns(*order, n, settings):
                if side.label not in untaken:
                    untaken.add(side.label)
                    progress(f"effbench ab: side {side.label} ({side.spec}) did not take turns (its effbench "
                             "predates them): its processes run whole, as with --interleave processes")
            progress(f"effbench ab: pair {n + 1} done ({time.perf_counter() - started:.0f} s)")
        else:
            for side in order:
                run_process(side, n, settings)
                progress(f"effbench ab: pair {n + 1}, side {side.label} done ({time.perf_counter() - started:.0f} s)")
        pair_seconds.append(time.perf_counter() - t0)
        n += 1
        elapsed = time.perf_counter() - started
        out_of_time = minutes is not None and elapsed + max(pair_seconds) > minutes * 60
        runs = session_runs(settings)
        failed = any(r.status is not Status.OK for r in runs)
        ended = n >= settings.plan[-1] or out_of_time or failed
        if n in settings.plan or ended:
            sides = {label: [r for r in runs if f"{SIDE_TAG}{label}" in r.tags] for label in ("A", "B")}
            result = evaluate_processes(sides["A"], sides["B"], gate, f"B ({side_b.spec})", f"A ({side_a.spec})",
                                        ended=ended)
            progress(_look_line(result, n, elapsed))
            if result.decided or ended:
                return result, n, elapsed


def cmd_ab(args: argparse.Namespace) -> int:
    from effbench.gate.config import GateConfigError
    from effbench.gate.core import GateUsageError
    from effbench.gate.process_stats import plan_looks
    from effbench.store.base import check_url

    try:
        gate = load_gate_options(args, match="ab")
        if args.min < 2:
            raise AbError("--min must be at least 2: one pair cannot show the spread between processes")
        try:
            plan = plan_looks(args.min, args.max, args.looks)
        except ValueError as e:
            raise AbError(f"--min/--max/--looks: {e}") from None
        if args.minutes is not None and args.minutes <= 0:
            raise AbError("--minutes must be positive")
        if args.threads < 0:
            raise AbError("--threads must be ≥ 0")
        _check_overrides(args.overrides, "OVERRIDE")
        cpus = parse_cpus(args.cpus)
        workdir = Path(args.workdir)
        side_a = resolve_side(args.side_a, "A", workdir)
        side_b = resolve_side(args.side_b, "B", workdir)
        session = uuid.uuid4().hex[:12]
        logdir = (workdir / session).resolve()
        logdir.mkdir(parents=True, exist_ok=True)
        settings = Settings(session, absolute_store_url(check_url(args.db)), args.threads, args.hash_seed,
                            cpus, plan, tuple(args.overrides), logdir, args.interleave)
        print(f"effbench ab: session {session}: A = {side_a.spec}, B = {side_b.spec}; looks at "
              f"{', '.join(map(str, plan))} pairs; interleaving {args.interleave}; logs in {logdir}", flush=True)
        result, n, elapsed = run_session(side_a, side_b, settings, gate, args.minutes,
                                         lambda line: print(line, file=sys.stderr, flush=True))
    except (AbError, GateConfigError, GateUsageError) as e:
        print(f"effbench ab: {e}", file=sys.stderr)
        return EXIT_USAGE
    code = report(result, args, "effbench ab")
    gate_file = f" --gate {shlex.quote(args.gate)}" if args.gate else ""
    print(f"effbench ab: {n} pairs in {elapsed / 60:.1f} min; re-read with: effbench gate --db "
          f"{shlex.quote(settings.store_url)} --baseline tag:{SESSION_TAG}{session},{SIDE_TAG}A "
          f"--candidate tag:{SESSION_TAG}{session},{SIDE_TAG}B --match ab{gate_file}")
    return code

