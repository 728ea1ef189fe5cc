"""What the inference and serving scenarios share: the backend loaded with the
subject's technique, and real-text prompts from the held-out split."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from effbench.backends import Backend
    from runners.base import Subject


def load_backend(subject: Subject, device: torch.device, **options) -> Backend:
    from effbench.backends import create_backend

    backend = create_backend(subject.backend, **options)
    backend.load(subject, device)
    return backend


def heldout_ids(subject: Subject, tokenizer) -> list[int]:
    """The held-out split as token ids: prompts and perplexity come from text the model never trained on."""
    return tokenizer(subject.corpus.heldout_text, add_special_tokens=False).input_ids


def make_prompts(token_ids: list[int], count: int, prompt_tokens: int, seed: int) -> torch.Tensor:
    """`count` real-text windows of prompt_tokens, at seeded offsets."""
    import torch

    span = len(token_ids) - prompt_tokens
    if span <= 0:
        raise ValueError(f"held-out text has {len(token_ids)} tokens; scenario.prompt_tokens={prompt_tokens} needs more")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, span, (count,), generator=g).tolist()
    return torch.tensor([token_ids[s : s + prompt_tokens] for s in starts])
