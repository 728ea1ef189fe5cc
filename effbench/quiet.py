"""Quiet output: library messages that say nothing to an effbench user, dropped where
they are emitted (each library's own logger), each for a stated reason; and progress bars
only on a terminal, so logs and CI output hold no carriage returns or cursor escapes."""

from __future__ import annotations

import logging
import os
import re
import sys


class _Drop(logging.Filter):
    """Drops the records of one logger whose message matches `pattern` (when `applies`)."""

    def __init__(self, pattern: str, applies=lambda: True) -> None:
        super().__init__()
        self.pattern, self.applies = re.compile(pattern), applies

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.pattern.search(record.getMessage()) and self.applies())


class _Once(_Drop):
    """Lets the first matching record through and drops its repeats."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.pattern.search(record.getMessage()):
            return True
        seen, self.seen = getattr(self, "seen", False), True
        return not seen


def _no_cuda() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and not torch.cuda.is_available()


# logger name → (message pattern, when it applies). Each message is logged once per process
# by the library's own logger, before or while a technique is applied.
NOISE = {
    # torchao tries to load every prebuilt extension it ships, among them the Blackwell MXFP8
    # and Hopper CUTLASS kernels (built for another Python here); effbench's torchao techniques
    # (int8 weight-only / dynamic, int4 weight-only) use neither.
    "torchao": (r"Failed to load .*_C_(mxfp8|cutlass_90a)", lambda: True),
    # Triton compiles GPU kernels: on a machine without CUDA it could not run anyway.
    "torchao.kernel.intmm": (r"Detected no triton", _no_cuda),
    # A deprecation addressed to torchao's authors (it registers Enums as pytree constants).
    "torch.utils._pytree": (r"is an Enum subclass and is now natively supported", lambda: True),
    # bitsandbytes falls back to its own CPU 4-bit kernel, which is what effbench measures; the
    # optional hub kernel it suggests cannot be fetched offline.
    "bitsandbytes.backends.cpu.ops": (r"Failed to load CPU gemm_4bit_forward from kernels-community", lambda: True),
}


# Said once, not once per call: bitsandbytes' int8 matmul warns on every forward that it casts
# fp32 activations to fp16 (~20,000 lines a run). Worth knowing once: that is the technique's arithmetic.
ONCE = {"bitsandbytes.autograd._functions": r"MatMul8bitLt: inputs will be cast"}


def install() -> None:
    """Attach the filters (idempotent). Loggers are created here if their library is not
    imported yet, so the filter is in place when it is."""
    filters = [(name, _Drop(pattern, applies)) for name, (pattern, applies) in NOISE.items()]
    filters += [(name, _Once(pattern)) for name, pattern in ONCE.items()]
    for name, f in filters:
        logger = logging.getLogger(name)
        if not any(isinstance(g, _Drop) for g in logger.filters):
            logger.addFilter(f)


def progress_bars_on_terminals_only() -> None:
    """When stderr is not a terminal (a log file, CI, a pipe), turn progress bars off for this
    process and its children: tqdm's own (TQDM_DISABLE sets its default, read when tqdm is
    imported) and transformers' and huggingface_hub's (HF_HUB_DISABLE_PROGRESS_BARS)."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
