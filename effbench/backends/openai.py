"""The OpenAI-compatible server backend: the run's model behind a server
reached over HTTP (vLLM, SGLang, TGI, llama.cpp's server, `transformers serve`).

Either effbench manages the server — `server.command` is started on the run's
model (a local directory or hub id; a built-in tiny model is saved to a cached
directory first), waited on until healthy, and stopped after the run — or it
connects to a running one at `url`. The serve scenario drives it with its load
profiles through `client()`; the server's cost over the load window comes from
`cost_tracker()`: its process tree (and the GPUs of `server.gpus`) when it runs
on this host, "not measured" when it is remote.

No capability of an in-process backend: the model is not in this process, so
no FLOPs, weight bytes, parameters, module or process memory are counted here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from effbench.backends import OpenAIBackendConfig
    from effbench.config.schema import RunConfig
    from effbench.serving.managed import ManagedServer
    from effbench.serving.openai_client import OpenAIStreamClient
    from effbench.serving.server_cost import ServerCostTracker
    from runners.base import Subject


def validate(cfg: RunConfig) -> None:
    """Config-time checks of backend=openai (nothing starts here; a URL is asked whether it is up)."""
    from effbench.serving.managed import check_command
    from effbench.serving.openai_client import check_server

    b, server = cfg.backend, cfg.backend.server
    if (b.url is None) == (server.command is None):
        raise ConfigError(
            "backend=openai needs exactly one of backend.url (a server that is running, e.g. "
            "backend.url=http://127.0.0.1:8000) and backend.server.command (a server effbench starts on the run's "
            f"model, e.g. backend=transformers-serve); got url={b.url!r}, server.command={server.command!r}")
    if not b.request_timeout_s > 0:
        raise ConfigError(f"backend.request_timeout_s={b.request_timeout_s} must be > 0 seconds")
    if cfg.technique.method != "precision":
        raise ConfigError(
            f"backend=openai: technique={cfg.technique.name} (method {cfg.technique.method}) is applied to a model "
            "in this process, and a server loads the model itself. Use a precision technique (fp32, bf16, fp16), "
            "whose dtype fills the server command's {dtype}, and put the engine's own quantization flags in "
            "backend.server.command")
    if server.command is None:
        check_server(b.url)  # ServerUnavailable: a ConfigError naming the URL and what to check
        return
    try:
        check_command(server.command)
    except ValueError as e:
        raise ConfigError(f"backend.{e}") from None
    if not server.ready_timeout_s > 0:
        raise ConfigError(f"backend.server.ready_timeout_s={server.ready_timeout_s} must be > 0 seconds")
    if not server.ready_path.startswith("/"):
        raise ConfigError(f"backend.server.ready_path={server.ready_path!r} must be a path starting with /")
    if server.port is not None and not 0 < server.port < 65536:
        raise ConfigError(f"backend.server.port={server.port} must be 1–65535, or null for a free port")
    if any(i < 0 for i in server.gpus):
        raise ConfigError(f"backend.server.gpus={list(server.gpus)}: NVML indices are ≥ 0")
    model = cfg.model
    if model.source == "builtin" and model.tokenizer == "byte":
        raise ConfigError(
            "model.tokenizer=byte: a server loads the model's tokenizer from its directory and serving engines "
            "need a fast (Rust) tokenizer, which the byte-level ByT5 tokenizer is not; set model.tokenizer=bpe")
    if model.source == "hf" and model.revision is not None:
        raise ConfigError(f"model.revision={model.revision}: server.command gets {{model}} = model.id only; give the "
                          "revision in the command (e.g. vLLM --revision) or a local directory as model.id")


@dataclass(frozen=True)
class ServedModel:
    name: str  # as the in-process backend would name the model, so both runs group together
    tokenizer: Any  # makes the prompts and counts tokens where the server sends no usage


def served_model(model_cfg: Any) -> ServedModel:
    from effbench.models.zoo import artifact_location, build_tokenizer, load_tokenizer

    if model_cfg.source == "builtin":
        return ServedModel(model_cfg.name, build_tokenizer(model_cfg.tokenizer))
    if model_cfg.source == "hf":
        return ServedModel(model_cfg.name, load_tokenizer(model_cfg.id, revision=model_cfg.revision,
                                                          trust_remote_code=model_cfg.trust_remote_code))
    if model_cfg.source == "gguf":
        return ServedModel(model_cfg.name, load_tokenizer(model_path(model_cfg)))
    path, name = artifact_location(model_cfg)
    return ServedModel(name, load_tokenizer(path))


def model_path(model_cfg: Any) -> str:
    """What a managed server is given as {model}: a hub id or a local directory;
    a built-in model is saved once to a directory cached by its config, a GGUF file
    is its cached plain checkpoint (the one the in-process backend loads)."""
    if model_cfg.source == "hf":
        return str(model_cfg.id)
    if model_cfg.source == "artifact":
        from effbench.models.zoo import artifact_location

        return str(artifact_location(model_cfg)[0])
    if model_cfg.source == "gguf":
        from effbench.models.gguf import gguf_checkpoint, gguf_file

        return str(gguf_checkpoint(gguf_file(model_cfg)).path)
    return str(_saved_builtin(model_cfg))


def _saved_builtin(model_cfg: Any) -> Path:
    from omegaconf import OmegaConf

    from effbench.cache import cached_dir
    from effbench.models.zoo import BPE_SETTINGS

    settings = OmegaConf.to_container(OmegaConf.structured(model_cfg), enum_to_str=True)
    if model_cfg.tokenizer == "bpe":
        settings["bpe"] = BPE_SETTINGS  # a changed tokenizer is a changed model

    def build(directory: Path) -> None:
        from effbench.models import load_model

        loaded = load_model(model_cfg)  # fp32, weights from init_seed: the in-process backend's model
        loaded.model.save_pretrained(directory)
        loaded.tokenizer.save_pretrained(directory)

    return cached_dir("served-models", model_cfg.name, settings, build)


class OpenAIBackend:
    kind = "openai"
    capabilities: frozenset = frozenset()

    def __init__(self, config: OpenAIBackendConfig):
        self.config = config
        self.tokenizer = None
        self.model_name = ""
        self.provenance: dict = {}
        self.url = ""
        self.request_model: str | None = None
        self.server: ManagedServer | None = None

    @property
    def pid(self) -> int | None:
        """The local server's pid; None for a remote one."""
        return self.server.pid if self.server is not None else None

    def load(self, subject: Subject, device: torch.device) -> None:
        """Start the managed server (ServerStartError with its log's tail if it
        cannot) or find the remote one (ServerUnavailable if it is not up)."""
        from effbench.serving.managed import ManagedServer
        from effbench.serving.openai_client import check_server, server_root

        c, s = self.config, self.config.server
        served = served_model(subject.model)
        self.tokenizer, self.model_name = served.tokenizer, served.name
        facts: dict[str, Any] = {"endpoint": c.endpoint.value, "extra_body": dict(c.extra_body)}
        if s.command is not None:
            path = model_path(subject.model)
            self.server = ManagedServer(s.command, path, host=s.host, port=s.port, ready_timeout_s=s.ready_timeout_s,
                                        ready_path=s.ready_path, log=s.log, env=dict(s.env),
                                        dtype=subject.technique_config.dtype.value, device=str(device))
            facts |= {"managed": True, "command": shlex.join(self.server.args), "model_path": path,
                      "log": str(self.server.log_path)}
            self.server.start()
            self.url = self.server.url
        else:
            self.url = server_root(c.url)
            facts |= {"managed": False,
                      "technique": f"declared, not checked: the remote server chose its own precision "
                                   f"({subject.technique_config.name} is what the run says it serves)"}
        try:
            listed = check_server(self.url)
        except BaseException:
            self.close()
            raise
        self.request_model = c.model or (listed[0] if listed else None)
        self.provenance = {"server": {"url": self.url, **facts, "models_listed": listed,
                                      "request_model": self.request_model}}

    def client(self) -> OpenAIStreamClient:
        from effbench.serving.openai_client import OpenAIStreamClient

        c = self.config

        def count_tokens(text: str) -> int:
            return len(self.tokenizer(text, add_special_tokens=False).input_ids)

        return OpenAIStreamClient(self.url, count_tokens, endpoint=c.endpoint, model=self.request_model,
                                  timeout_s=c.request_timeout_s, extra_body=dict(c.extra_body))

    def cost_tracker(self) -> ServerCostTracker:
        """The server's process tree and GPUs over a measured window; 'not measured' when remote."""
        from effbench.serving.server_cost import GpuSet, ServerCostTracker

        gpus = self.config.server.gpus
        return ServerCostTracker(self.pid, GpuSet(list(gpus)) if self.server is not None and gpus else None,
                                 remote=self.url)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
