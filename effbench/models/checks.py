"""Config-time checks of a model config: what would only fail after minutes of
loading (a local path that does not exist, a hub id that cannot be reached
offline, a run id the store does not hold) fails before anything loads, as a
ConfigError naming the key. Returns a model built on the meta device where one
can be built cheaply, for the technique's own check."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from effbench.errors import ConfigError

_RUN_ID = re.compile(r"[0-9a-f]+")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def check_hf(model_cfg: Any) -> Path | None:
    """The local directory of model.id (None for a hub id); ConfigError when it cannot be found."""
    ident = str(model_cfg.id)
    path = Path(ident).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.id={ident}: {path} has no config.json (a directory written by "
                              "save_pretrained, or a hub id)")
        return path
    if ident.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"model.id={ident}: no such directory")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(ident, "config.json", revision=model_cfg.revision), str):
            raise ConfigError(f"model.id={ident}: HF_HUB_OFFLINE is set and the model is not in the local hub cache "
                              "(download it first, or give a local directory)")
    return None


def check_artifact(model_cfg: Any) -> Path:
    """The artifact's directory, complete (its hash is checked when it loads)."""
    from effbench.artifacts import MARKER
    from effbench.store import StoreError, open_store

    if not _RUN_ID.fullmatch(str(model_cfg.run_id)):
        raise ConfigError(
            f"model.run_id={model_cfg.run_id!r} is not a run id (hex digits, or a prefix of them). The command line "
            "reads an id like 710e6566 as a number (7.1e6566 → inf): quote it, model.run_id=\"'710e6566'\", "
            "or give more of the id")
    try:
        with open_store(model_cfg.store_url, read_only=True) as store:
            record = store.get(str(model_cfg.run_id))
    except StoreError as e:
        raise ConfigError(f"model.run_id={model_cfg.run_id}: {e}") from None
    except KeyError as e:
        raise ConfigError(f"model.run_id={model_cfg.run_id}: {e.args[0]}") from None
    if not record.artifact:
        raise ConfigError(f"model.run_id={model_cfg.run_id}: run {record.id} saved no artifact (only pretraining and "
                          "fine-tuning runs with scenario.save_artifact=true do)")
    path = Path(record.artifact["path"])
    if not (path / MARKER).is_file():
        raise ConfigError(f"model.run_id={model_cfg.run_id}: the artifact of run {record.id} is missing or "
                          f"incomplete at {path}")
    return path


def check_model(model_cfg: Any):
    """Check the model config; returns a meta-device model where one can be built (else None)."""
    import torch

    if model_cfg.source == "builtin":
        from effbench.models.architectures import build_architecture

        # Building on the meta device allocates nothing and runs every shape check a real build would.
        with torch.device("meta"):
            try:
                return build_architecture(model_cfg, vocab_size=384)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    if model_cfg.source == "hf":
        directory = check_hf(model_cfg)
        return _meta_from(directory or model_cfg.id, model_cfg.revision, model_cfg.trust_remote_code)
    if model_cfg.source == "artifact":
        return _meta_from(check_artifact(model_cfg))
    if model_cfg.source == "gguf":
        from effbench.models.gguf import gguf_file

        gguf_file(model_cfg)  # the file (or its package) exists; converting it is the run's first step
        return None
    return None


def _meta_from(id_or_path: str | Path, revision: str | None = None, trust_remote_code: bool = False):
    """The model built on the meta device from its config.json; None when that cannot be read
    here (the run's own load then names the problem)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(id_or_path, revision=revision, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - unreadable here: the run's own load reports why
        return None
