"""Prompts of an exact token count, sent as text.

An OpenAI-compatible server tokenizes the text it receives. Cutting a window of
token ids out of real text and decoding it does not always give back the same
count (a window that starts or ends inside a word re-tokenizes differently), so
a window is kept only when its text re-encodes to exactly the intended count.
What the server saw is then checked per request against `usage.prompt_tokens`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int  # the text's length in tokens, special tokens left out
    server_tokens: int  # with the special tokens the tokenizer adds (BOS ...): what usage.prompt_tokens should say


def exact_token_prompts(tokenizer, source_ids: list[int], count: int, prompt_tokens: int, seed: int,
                        tries_per_prompt: int = 200) -> list[Prompt]:
    """`count` windows of `prompt_tokens` ids at seeded offsets of `source_ids`
    (held-out text), each decoded to a text that re-encodes to exactly that count."""
    span = len(source_ids) - prompt_tokens
    if span <= 0:
        raise ValueError(f"source text has {len(source_ids)} tokens; prompt_tokens={prompt_tokens} needs more")
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        for _ in range(tries_per_prompt):
            start = rng.randrange(span)
            text = tokenizer.decode(source_ids[start:start + prompt_tokens])
            if len(tokenizer(text, add_special_tokens=False).input_ids) == prompt_tokens:
                prompts.append(Prompt(text, prompt_tokens, len(tokenizer(text).input_ids)))
                break
        else:
            raise ValueError(f"no window of {prompt_tokens} tokens in {tries_per_prompt} tries re-encodes to "
                             f"{prompt_tokens} tokens with this tokenizer")
    return prompts
