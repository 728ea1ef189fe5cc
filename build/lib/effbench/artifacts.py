"""Trained checkpoints as run artifacts: saved atomically under
results/artifacts/<run id>, recorded on the run with their hash, and loaded
back by run id (`model=artifact model.run_id=...`)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

MARKER = "effbench-artifact.sha256"


def artifacts_root() -> Path:
    return Path(os.environ.get("EFFBENCH_ARTIFACTS", "results/artifacts"))


def _digest(directory: Path) -> tuple[str, int]:
    """sha256 over every file but the marker, in name order; and their total bytes."""
    h, total = hashlib.sha256(), 0
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MARKER:
            h.update(p.relative_to(directory).as_posix().encode())
            data = p.read_bytes()
            h.update(data)
            total += len(data)
    return h.hexdigest(), total


def save_artifact(model, tokenizer, run_id: str) -> dict:
    """Write to <id>.partial, then rename: a crash never leaves a complete-looking artifact."""
    final = artifacts_root() / run_id
    partial = final.with_name(run_id + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    sha, size = _digest(partial)
    (partial / MARKER).write_text(sha)
    partial.rename(final)
    return {"path": str(final.resolve()), "sha256": sha, "bytes": size}


def discard_partial(run_id: str) -> None:
    shutil.rmtree(artifacts_root() / (run_id + ".partial"), ignore_errors=True)


def verified_path(artifact: dict | None, run_id: str) -> Path:
    """The artifact's directory, after checking it is complete and unchanged."""
    if not artifact:
        raise FileNotFoundError(f"run {run_id} saved no artifact (only pretraining/fine-tuning runs with "
                                "scenario.save_artifact=true do)")
    path = Path(artifact["path"])
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"artifact of run {run_id} is missing or incomplete at {path}")
    sha, _ = _digest(path)
    if sha != artifact["sha256"]:
        raise ValueError(f"artifact of run {run_id} at {path} changed since it was saved (sha256 {sha[:12]} "
                         f"≠ recorded {artifact['sha256'][:12]})")
    return path
