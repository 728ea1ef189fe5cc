"""The in-process transformers backend: the technique's model in this process,
`generate()` timed token by token through a streamer. Every capability: FLOPs
counted op by op, serialized weight bytes, parameter counts, the torch module
for perplexity, KV-cache and lm-eval figures, process memory that is the model's."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import torch

from effbench.backends.base import Capability
from effbench.metrics.compression import SizeBytes, baseline_dtype, serialized_size_at, serialized_size_bytes
from effbench.metrics.flops import FlopCount, count_flops
from effbench.metrics.latency import RequestTiming, TokenTimer
from effbench.models import load_model, parameter_counts
from effbench.techniques import torch_dtype

if TYPE_CHECKING:
    from effbench.backends import HfBackendConfig
    from runners.base import Subject


def fixed_length_kwargs(tokenizer, output_tokens: int, **extra) -> dict:
    """Greedy decoding of exactly output_tokens: EOS cannot end a request early,
    so every repeat does the same work."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return dict(max_new_tokens=output_tokens, min_new_tokens=output_tokens, do_sample=False, pad_token_id=pad,
                **extra)


class HfBackend:
    kind = "hf"
    capabilities = frozenset(Capability)

    def __init__(self, config: HfBackendConfig, cache_implementation: str | None = None):
        self.config = config
        self.cache_implementation = cache_implementation
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self.model_name = ""
        self.provenance: dict = {}
        self.device = torch.device("cpu")
        self.reference_bytes: int | None = None  # the weights at the compression baseline's dtype
        self.reference_dtype = ""
        self.parameters: dict[str, int] = {}
        self._timer: TokenTimer | None = None
        self._size: SizeBytes | None = None
        self.last_cache = None  # the generation cache of the last timed generate()

    def load(self, subject: Subject, device: torch.device) -> None:
        technique = subject.technique
        technique.check_device(device)
        loaded = load_model(subject.model, technique.load_dtype(subject.technique_config))
        self.tokenizer, self.model_name, self.device = loaded.tokenizer, loaded.name, device
        self.provenance = dict(loaded.provenance)
        model = loaded.model
        self.parameters = parameter_counts(model)
        self.reference_dtype = baseline_dtype(device.type)
        self.reference_bytes = serialized_size_at(model, torch_dtype(self.reference_dtype))
        applied = technique.apply(model, subject.technique_config, device)
        if applied is not model:
            # A technique that builds a new model (bitsandbytes loads a quantized copy) must not
            # leave the original resident: its bytes would count against the technique.
            del loaded, model
            gc.collect()
        self.model = applied
        # Sized now: bitsandbytes on a CPU rewrites its packed weights during the first forward.
        self._size = serialized_size_bytes(applied)
        self._timer = TokenTimer(device)

    def weight_bytes(self) -> SizeBytes:
        return self._size

    def generate(self, input_ids: torch.Tensor, output_tokens: int) -> RequestTiming:
        self._timer.reset()
        out = self.model.generate(**self._kwargs(input_ids, output_tokens), streamer=self._timer,
                                  return_dict_in_generate=True)
        # What the KV-cache figures count; transformers 5.24 renamed the field `cache` (the old
        # name still answers, with a deprecation warning on every run).
        self.last_cache = out["cache"] if "cache" in out else out.past_key_values
        return self._timer.timing()

    def generate_untimed(self, input_ids: torch.Tensor, output_tokens: int) -> None:
        """A warm-up call: same work, no streamer."""
        self.model.generate(**self._kwargs(input_ids, output_tokens))

    def count_generate_flops(self, input_ids: torch.Tensor, output_tokens: int) -> FlopCount:
        return count_flops(lambda: self.model.generate(**self._kwargs(input_ids, output_tokens)))

    def _kwargs(self, input_ids: torch.Tensor, output_tokens: int) -> dict:
        extra = {"cache_implementation": self.cache_implementation} if self.cache_implementation else {}
        return fixed_length_kwargs(self.tokenizer, output_tokens, input_ids=input_ids,
                                   attention_mask=torch.ones_like(input_ids), **extra)

    def close(self) -> None:
        self.model = self.last_cache = None
        gc.collect()
