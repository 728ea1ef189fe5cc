"""What every effbench launcher does the same way."""

import copy
from typing import Any, Dict

from hydra.types import HydraContext


def _job_side_callback(callback: Any) -> Any:
    """The callback as a job process needs it: without progress bars, which
    belong to the launching process's terminal (and a pickled tqdm cannot be
    unpickled: its stream wrapper recurses in __getattr__)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return callback
    bars = [k for k, v in vars(callback).items() if isinstance(v, tqdm)] if hasattr(callback, "__dict__") else []
    if not bars:
        return callback
    clone = copy.copy(callback)
    for k in bars:
        setattr(clone, k, None)
    return clone


class JobSidePickling:
    """Mixin for submitit-based launchers: submitit pickles the launcher into
    every job; leave the launching process's terminal state (effbench's sweep
    progress bar) out of it."""

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        ctx = state.get("hydra_context")
        if ctx is not None and getattr(ctx, "callbacks", None) is not None:
            callbacks = copy.copy(ctx.callbacks)
            callbacks.callbacks = [_job_side_callback(c) for c in ctx.callbacks.callbacks]
            state["hydra_context"] = HydraContext(config_loader=ctx.config_loader, callbacks=callbacks)
        return state
