"""FLOP counting (interim home: the formulas still live in effbench.metrics.compute)."""

from __future__ import annotations

from collections.abc import Callable

from effbench.metrics.compute import count_flops as _count_ops


def count_flops(fn: Callable[[], object], model=None) -> int | None:
    return _count_ops(fn)
