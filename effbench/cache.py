"""Files effbench derives deterministically from settings — a tokenizer trained
on the bundled corpus, a built-in model saved for a server to load — built once
and kept under `$EFFBENCH_CACHE` (default: the user's cache directory,
`$XDG_CACHE_HOME/effbench` or ~/.cache/effbench, so runs from any working
directory share it; the CPU probes live there too) in a directory named by
a hash of those settings, so a changed setting gets a new directory and never a
stale one. A directory is written under a temporary name and renamed when
complete: a crash, or a second process building the same one, never leaves a
half-written directory under the final name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("EFFBENCH_CACHE"):
        return Path(os.environ["EFFBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "effbench"


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_dir(kind: str, name: str, settings: dict, build: Callable[[Path], None]) -> Path:
    """<root>/<kind>/<name>-<hash of settings>, built by `build(directory)` when missing."""
    final = cache_root() / kind / f"{name}-{settings_key(settings)}"
    if final.is_dir():
        return final
    partial = final.with_name(f"{final.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        build(partial)
        (partial / "effbench-settings.json").write_text(json.dumps(settings, sort_keys=True, default=str, indent=1))
        try:
            partial.rename(final)
        except OSError:  # another process finished the same directory first: keep theirs
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final
