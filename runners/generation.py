"""What the inference and serving runners share: loading the model with its
technique, real-text prompts from the held-out split, and generate() settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effbench.config.schema import RunConfig
from effbench.data import load_corpus
from effbench.models import load_model
from effbench.models.zoo import LoadedModel
from effbench.techniques import get_technique
from effbench.techniques.registry import TechniqueSpec


@dataclass
class Generation:
    technique: TechniqueSpec
    loaded: LoadedModel
    heldout_ids: list[int]


def load_for_generation(cfg: RunConfig, device: torch.device) -> Generation:
    """The model as the technique loads it (not yet applied) and the held-out token ids."""
    technique = get_technique(cfg.technique.method)
    technique.check_device(device)
    loaded = load_model(technique.configure_model(cfg.model, cfg.technique), technique.load_dtype(cfg.technique))
    corpus = load_corpus(cfg.data.source, cfg.data.path, cfg.data.text_field, cfg.data.heldout_fraction,
                         cfg.data.max_chars)
    return Generation(technique, loaded, loaded.tokenizer(corpus.heldout_text, add_special_tokens=False).input_ids)


def make_prompts(token_ids: list[int], count: int, prompt_tokens: int, seed: int) -> torch.Tensor:
    """`count` real-text windows of prompt_tokens, at seeded offsets."""
    span = len(token_ids) - prompt_tokens
    if span <= 0:
        raise ValueError(f"held-out text has {len(token_ids)} tokens; scenario.prompt_tokens={prompt_tokens} needs more")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, span, (count,), generator=g).tolist()
    return torch.tensor([token_ids[s : s + prompt_tokens] for s in starts])


def fixed_length_kwargs(tokenizer, output_tokens: int, **extra) -> dict:
    """Greedy decoding of exactly output_tokens: EOS cannot end a request early,
    so every repeat does the same work."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return dict(max_new_tokens=output_tokens, min_new_tokens=output_tokens, do_sample=False, pad_token_id=pad,
                **extra)
