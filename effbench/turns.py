"""Turn-taking between measured processes: the two sides of an `effbench ab` pair run
at the same time but never together, and their measured windows alternate
A B B A A B … a fraction of a second apart.

Why: on shared vCPUs the machine's speed changes from second to second (another
tenant, which core, its cache), so two processes measured one after another see
different machines — 18–26% spread in the log ratio of neighbouring processes on
our runner (docs/results/gate_power.md) — while windows a few hundred milliseconds
apart see the same one. Interleaving the windows of two live processes keeps the
process as the unit (each side's figures still come from its own fresh process)
and cancels the machine's speed in each pair's ratio.

Protocol. The controller starts a process with the environment variable
`EFFBENCH_TURNS=R,W`: two inherited pipe descriptors. The process runs until its
first measured window, then *yields*: writes one byte to W and blocks reading one
byte from R. The controller gives the next turn to the other process, and so on.
A process's turn thus runs one window and whatever follows it up to the next
window (or to its exit). Nothing is ever measured while the other process runs.
An effbench that does not know the protocol never yields: its whole run is one
turn, and the pair degrades to one process after the other (the controller says so).
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

ENV = "EFFBENCH_TURNS"
_YIELD, _GO = b"y", b"g"


class _Baton:
    def __init__(self, spec: str):
        self.read, self.write = (int(x) for x in spec.split(","))
        self.held = True  # False once the controller is gone: nobody left to wait for

    def pass_and_wait(self) -> None:
        if not self.held:
            return
        try:
            os.write(self.write, _YIELD)
            self.held = bool(os.read(self.read, 1))
        except OSError:
            self.held = False


@cache
def _baton() -> _Baton | None:
    # Taken out of the environment, so that processes this one starts do not inherit it; and
    # both descriptors must be pipes: a process that inherited only the variable holds other files there.
    spec = os.environ.pop(ENV, None)
    if not spec:
        return None
    try:
        baton = _Baton(spec)
        if all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in (baton.read, baton.write)):
            return baton
    except (ValueError, OSError):
        pass
    return None


def take_turn() -> None:
    """Before a measured window: let the other process of the pair run, and return
    when it is this process's turn again. A no-op outside `effbench ab`."""
    if (baton := _baton()) is not None:
        baton.pass_and_wait()


def whose_turn(t: int) -> int:
    """Whose turn the t-th window is, of processes 0 and 1: 0, 1, 1, 0, 0, 1, … (an ABBA
    order: a drift that is linear over a few windows weighs on both sides alike)."""
    return (0, 1, 1, 0)[t % 4]


@dataclass
class TurnProcess:
    """One process of a pair: its argv, environment, directory and log."""

    argv: Sequence[str]
    env: dict[str, str]
    cwd: str
    log_path: str
    preexec_fn: Callable[[], None] | None = None
    returncode: int | None = None
    yields: int = 0  # windows it yielded before: 0 = it never took turns
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _go: int = -1
    _done: int = -1

    def start(self) -> None:
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        env = {**self.env, ENV: f"{go_r},{done_w}"}
        with open(self.log_path, "w") as log:
            self._proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          pass_fds=(go_r, done_w), preexec_fn=self.preexec_fn)
        os.close(go_r)
        os.close(done_w)
        self._go, self._done = go_w, done_r

    def turn(self) -> bool:
        """Run until the process yields (True) or exits (False)."""
        if self._proc is None:
            self.start()
        else:
            try:
                os.write(self._go, _GO)
            except BrokenPipeError:  # it died waiting for its turn (killed): the read below sees its end
                pass
        if os.read(self._done, 1):  # empty: every writer closed, i.e. the process ended
            self.yields += 1
            return True
        self.returncode = self._proc.wait()
        os.close(self._go)
        os.close(self._done)
        return False

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def run_in_turns(first: TurnProcess, second: TurnProcess) -> None:
    """Both processes to their end: each starts in turn (first, then second) and runs up
    to its first window; then the windows take turns first, second, second, first, …
    A process that has ended gives its turns to the other."""
    procs = (first, second)
    try:
        alive = [first.turn(), second.turn()]
        t = 0
        while any(alive):
            who = whose_turn(t)
            t += 1
            if not alive[who]:
                who = 1 - who
            alive[who] = procs[who].turn()
    finally:  # interrupted (Ctrl-C, an error): leave no process blocked on its turn
        for p in procs:
            p.kill()
