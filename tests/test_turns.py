"""Turn-taking between the two processes of an `effbench ab` pair (effbench/turns.py)."""

from __future__ import annotations

import os
import sys

from effbench.turns import ENV, TurnProcess, run_in_turns, take_turn, whose_turn

# A stand-in for a measured process: before each of its windows it takes its turn, then
# writes the window's start, works a little, and writes its end.
CHILD = """
import sys, time
from effbench.turns import take_turn
name, windows, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
turns = sys.argv[4] == "turns"
for i in range(windows):
    if turns:
        take_turn()
    with open(path, "a") as f:
        f.write(f"<{name}{i} ")
    time.sleep(0.05)
    with open(path, "a") as f:
        f.write(f"{name}{i}> ")
if len(sys.argv) > 5:
    sys.exit(int(sys.argv[5]))
"""


def child(tmp_path, name: str, windows: int, turns: bool = True, exit_code: int | None = None) -> TurnProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    argv = [sys.executable, str(script), name, str(windows), str(tmp_path / "windows.log"),
            "turns" if turns else "whole", *([str(exit_code)] if exit_code is not None else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return TurnProcess(argv, env, str(tmp_path), str(tmp_path / f"{name}.log"))


def windows(tmp_path) -> list[str]:
    return (tmp_path / "windows.log").read_text().split()


def test_turn_order_is_abba():
    assert [whose_turn(t) for t in range(8)] == [0, 1, 1, 0, 0, 1, 1, 0]


def test_windows_alternate_abba_and_never_overlap(tmp_path):
    a, b = child(tmp_path, "A", 4), child(tmp_path, "B", 4)
    run_in_turns(a, b)
    assert windows(tmp_path) == ["<A0", "A0>", "<B0", "B0>", "<B1", "B1>", "<A1", "A1>",
                                 "<A2", "A2>", "<B2", "B2>", "<B3", "B3>", "<A3", "A3>"]
    assert (a.returncode, b.returncode, a.yields, b.yields) == (0, 0, 4, 4)


def test_a_process_with_more_windows_gets_the_turns_the_ended_one_leaves(tmp_path):
    a, b = child(tmp_path, "A", 1), child(tmp_path, "B", 3)
    run_in_turns(a, b)
    assert windows(tmp_path) == ["<A0", "A0>", "<B0", "B0>", "<B1", "B1>", "<B2", "B2>"]


def test_an_effbench_without_turns_runs_whole_and_the_pair_still_ends(tmp_path):
    a, b = child(tmp_path, "A", 2, turns=False), child(tmp_path, "B", 2)
    run_in_turns(a, b)
    assert windows(tmp_path) == ["<A0", "A0>", "<A1", "A1>", "<B0", "B0>", "<B1", "B1>"]
    assert (a.yields, b.yields) == (0, 2)


def test_a_crashed_process_leaves_the_other_to_finish(tmp_path):
    a, b = child(tmp_path, "A", 1, exit_code=3), child(tmp_path, "B", 2)
    run_in_turns(a, b)
    assert (a.returncode, b.returncode) == (3, 0)
    assert windows(tmp_path)[-2:] == ["<B1", "B1>"]


def test_take_turn_outside_a_pair_does_nothing(monkeypatch):
    from effbench import turns

    monkeypatch.delenv(ENV, raising=False)
    turns._baton.cache_clear()
    take_turn()  # returns at once: no baton
    assert turns._baton() is None


def test_a_variable_without_its_pipes_is_ignored_and_not_passed_on(monkeypatch, tmp_path):
    """A process that inherited EFFBENCH_TURNS but not the pipes holds other files at
    those numbers: never write to them."""
    from effbench import turns

    with open(tmp_path / "f", "w") as f:
        monkeypatch.setenv(ENV, f"{f.fileno()},{f.fileno()}")
        turns._baton.cache_clear()
        take_turn()
        assert turns._baton() is None and ENV not in os.environ
    assert (tmp_path / "f").read_text() == ""
    turns._baton.cache_clear()


def test_a_vanished_controller_releases_the_process(monkeypatch):
    """The controller's end of the pipes closed: the process runs on, no longer waiting."""
    from effbench import turns

    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    os.close(go_w)  # the controller is gone: reading the next turn sees end of file
    monkeypatch.setenv(ENV, f"{go_r},{done_w}")
    turns._baton.cache_clear()
    try:
        take_turn()
        take_turn()
        assert os.read(done_r, 8) == b"y"  # it yielded once, then stopped waiting
        assert turns._baton().held is False
    finally:
        turns._baton.cache_clear()
        for fd in (go_r, done_r, done_w):
            os.close(fd)
