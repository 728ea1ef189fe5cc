"""A local server that effbench starts, waits on until healthy, and stops.

Ready-made commands (placeholders: {python} this interpreter, {model} the model
path or hub id, {host}, {port}); docs/serving.md has the GPU command lines:

  transformers serve (CPU or GPU, continuous batching): TRANSFORMERS_SERVE, with
      TRANSFORMERS_SERVE_EXTRA_BODY in every request so EOS cannot end one early
  vLLM (GPU):   vllm serve {model} --host {host} --port {port}            body: {"ignore_eos": true}
  SGLang (GPU): {python} -m sglang.launch_server --model-path {model} --host {host} --port {port}
                                                                          body: {"ignore_eos": true}
"""

from __future__ import annotations

import json
import os
import shlex
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

TRANSFORMERS_SERVE = "{python} -m transformers.cli.transformers serve {model} --host {host} --port {port} " \
                     "--continuous-batching"
# Under continuous batching `transformers serve` takes each request's EOS from
# its generation_config; -1 disables it (it accepts no ignore_eos / min_tokens).
TRANSFORMERS_SERVE_EXTRA_BODY = {"generation_config": json.dumps({"eos_token_id": -1})}


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


def render_command(command: str | list[str], **values: str) -> list[str]:
    """The argument list, placeholders filled; a string is split like a shell would."""
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    try:
        return [a.format(**values) for a in args]
    except (KeyError, IndexError) as e:
        raise ValueError(f"server.command has an unknown placeholder {e}; use {{{'}, {'.join(values)}}}") from None


class ManagedServer:
    """`with ManagedServer(...) as server:` starts the command in its own process
    group, polls `ready_path` until it answers 200, and stops the whole group
    on exit (SIGTERM, then SIGKILL after `grace_s`)."""

    def __init__(self, command: str | list[str], model: str, *, host: str = "127.0.0.1", port: int | None = None,
                 ready_timeout_s: float = 300.0, ready_path: str = "/health", log: str | Path | None = None,
                 env: dict[str, str] | None = None, grace_s: float = 15.0):
        self.host, self.port = host, port or free_port(host)
        self.args = render_command(command, python=sys.executable, model=str(model), host=host, port=str(self.port))
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
