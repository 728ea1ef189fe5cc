"""Shared pieces of the quantization techniques (the inference axis' int8 / int4).

Every quantization schema has `compute_dtype` (the dtype activations and the
layers left unquantized run in: float32 on a CPU; bfloat16 or float16 on a GPU)
and `skip_modules` (names of linear layers left unquantized; embeddings are
never quantized, and `lm_head` is kept by default, as the libraries do).
A `QuantSpec` also names the Python packages its backend needs, so a run
without them is stored as `skipped` with the command that installs them.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path


from effbench.config.schema import DType, TechniqueConfig
from effbench.techniques.registry import TechniqueSpec, UnsupportedTechnique, torch_dtype

if TYPE_CHECKING:
    import torch


@dataclass
class QuantConfig(TechniqueConfig):
    compute_dtype: DType = DType.float32
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head"])


def _config_dtype(cfg) -> torch.dtype:
    return torch_dtype(cfg.compute_dtype)


@dataclass(frozen=True)
class QuantSpec(TechniqueSpec):
    # Every quantization schema has compute_dtype: activations run in it, and hub
    # weights load in it (the layers left unquantized keep it).
    compute_dtype: Callable[[TechniqueConfig], torch.dtype] = _config_dtype
    load_dtype: Callable[[TechniqueConfig], torch.dtype] = _config_dtype
    # (import name, pip requirement) of each package the backend needs
    requires: tuple[tuple[str, str], ...] = ()

    def missing_packages(self) -> list[str]:
        return [pip for module, pip in self.requires if importlib.util.find_spec(module) is None]

    def check_device(self, device: torch.device) -> None:
        problems = []
        if device.type not in self.devices:
            need = "a CUDA GPU" if self.devices == ("cuda",) else " or ".join(self.devices)
            problems.append(f"technique method {self.method!r} needs {need} (runs on: {', '.join(self.devices)}); "
                            f"this run's device is {device.type}")
        missing = self.missing_packages()
        if missing:
            problems.append(f"it needs the package(s) {', '.join(missing)}, not installed here: "
                            f"pip install {' '.join(missing)}")
        if problems:
            raise UnsupportedTechnique("; ".join(problems))


def skipped(name: str, patterns: list[str]) -> bool:
    """`name` is left unquantized: it equals a pattern, ends with `.pattern`, or
    matches it as a shell-style wildcard (e.g. `model.layers.0.*`)."""
    return any(name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def target_linears(model: torch.nn.Module, patterns: list[str]) -> Iterator[tuple[str, torch.nn.Linear]]:
    """The nn.Linear layers to quantize: every one not matched by `patterns`."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not skipped(name, patterns):
            yield name, module


def replace_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@contextmanager
def saved_copy(model: torch.nn.Module, tokenizer=None) -> Iterator[Path]:
    """The model (and tokenizer) saved to a temporary directory, for backends that
    quantize while loading with `from_pretrained(quantization_config=...)`."""
    with tempfile.TemporaryDirectory(prefix="effbench-quant-") as d:
        model.save_pretrained(d)
        if tokenizer is not None:
            tokenizer.save_pretrained(d)
        yield Path(d)


def tokenizer_for(model: torch.nn.Module):
    """The tokenizer of a loaded model, for calibration data: hub and artifact
    models name their directory or hub id; built-in models use the byte tokenizer."""
    from effbench.models.zoo import build_tokenizer, load_tokenizer

    path = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
    if path:
        return load_tokenizer(path)
    tok = build_tokenizer("byte")
    if len(tok) != model.config.vocab_size:
        raise ValueError(f"cannot tell this built-in model's tokenizer (vocab {model.config.vocab_size}) for "
                         "calibration; quantize a hub or artifact model instead")
    return tok


def calibration_texts(source: str, samples: int, chars: int) -> list[str]:
    """`samples` windows of `chars` characters from the corpus' *train* split
    (never the held-out text that perplexity is measured on)."""
    from effbench.data import load_corpus

    text = load_corpus(source).train_text
    step = max(1, (len(text) - chars) // max(1, samples))
    return [text[i * step : i * step + chars] for i in range(samples)]
