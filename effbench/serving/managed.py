"""A local server that effbench starts, waits on until healthy, and stops.

The command is a template (placeholders: {python} this interpreter, {model} the
model path or hub id, {host}, {port}, {dtype} the precision technique's dtype,
{device} the run's device). configs/backend/transformers-serve.yaml holds the
ready-made `transformers serve` command and the request body that makes it
ignore EOS; docs/serving.md has the vLLM and SGLang command lines.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import httpx
import psutil

from effbench.serving.openai_client import ServingError


class ServerStartError(ServingError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it; another process could take it before the server does)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _temporary_log() -> Path:
    fd, name = tempfile.mkstemp(prefix="effbench-server-", suffix=".log")
    os.close(fd)
    return Path(name)


PLACEHOLDERS = ("python", "model", "host", "port", "dtype", "device")


def render_command(command: str | list[str], **values: str) -> list[str]:
    """The argument list, placeholders filled; a string is split like a shell would."""
    if isinstance(command, str):
        args = shlex.split(command)
    elif isinstance(command, (list, tuple)) and all(isinstance(a, (str, int, float)) for a in command):
        args = [str(a) for a in command]
    else:
        raise ValueError(f"server.command={command!r} must be one string or a list of arguments")
    if not args:
        raise ValueError("server.command is empty")
    try:
        return [a.format(**values) for a in args]
    except (KeyError, IndexError) as e:
        raise ValueError(f"server.command has an unknown placeholder {e}; use {{{'}, {'.join(values)}}}") from None
    except ValueError as e:  # a lone brace
        raise ValueError(f"server.command {shlex.join(args)}: {e} (write a literal brace as {{{{ or }}}})") from None


def check_command(command: str | list[str]) -> list[str]:
    """Config-time check: the command renders with the known placeholders and
    its program exists. ValueError naming what is wrong."""
    args = render_command(command, **{name: f"<{name}>" for name in PLACEHOLDERS})
    program = sys.executable if args[0] == "<python>" else args[0]
    if shutil.which(program) is None:
        raise ValueError(f"server.command: {program!r} is not an executable on PATH (install the engine, or give "
                         "its full path)")
    return args


class ManagedServer:
    """`with ManagedServer(...) as server:` starts the command in its own process
    group, polls `ready_path` until it answers 200, and stops the whole group
    on exit (SIGTERM, then SIGKILL after `grace_s`)."""

    def __init__(self, command: str | list[str], model: str, *, host: str = "127.0.0.1", port: int | None = None,
                 ready_timeout_s: float = 300.0, ready_path: str = "/health", log: str | Path | None = None,
                 env: dict[str, str] | None = None, dtype: str = "auto", device: str = "auto", grace_s: float = 15.0):
        self.host, self.port = host, port or free_port(host)
        self.args = render_command(command, python=sys.executable, model=str(model), host=host, port=str(self.port),
                                   dtype=dtype, device=device)
        self.ready_timeout_s, self.ready_path, self.grace_s = ready_timeout_s, ready_path, grace_s
        self.log_path = Path(log) if log else _temporary_log()
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.log_path.open(errors="replace") as f:
                return "".join(deque(f, lines))
        except OSError:
            return ""

    def start(self) -> ManagedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            try:
                self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                raise ServerStartError(f"cannot start server.command {shlex.join(self.args)}: {e}") from None
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(self._failure(f"exited with code {code} before it answered"))
            try:
                if httpx.get(self.url + self.ready_path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(self._failure(f"did not answer GET {self.ready_path} with 200 within "
                                                     f"{self.ready_timeout_s:g} s (server.ready_timeout_s)"))
            time.sleep(0.25)

    def _failure(self, what: str) -> str:
        return (f"server {shlex.join(self.args)} {what}; its log ({self.log_path}) ends:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after grace_s,
        including descendants that moved to a process group of their own."""
        if self.process is None:
            return
        tree = self._descendants()  # now, while they are still the server's children
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=self.grace_s)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # start_new_session: the group id is the server's pid
        except ProcessLookupError:
            pass

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
