"""Quality (docs/spec.md §2): next-token loss and perplexity on held-out text."""

from __future__ import annotations

import math

import torch

from effbench.metrics.catalog import make_metric
from effbench.metrics.record import Metric, Source


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, token_ids: list[int], context: int, device: torch.device,
                 batch_size: int = 8) -> tuple[float, list[float], int]:
    """Mean NLL per predicted token over non-overlapping `context`-token chunks.

    Returns (mean loss, per-chunk losses, predicted tokens)."""
    n_chunks = len(token_ids) // context
    if n_chunks == 0:
        raise ValueError(f"held-out text has {len(token_ids)} tokens, fewer than one context of {context}")
    ids = torch.tensor(token_ids[: n_chunks * context], device=device).view(n_chunks, context)
    losses: list[float] = []
    for i in range(0, n_chunks, batch_size):
        x = ids[i : i + batch_size]
        logits = model(input_ids=x).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="none"
        ).view(x.size(0), -1)
        losses += nll.mean(dim=1).tolist()
    # Chunks are equal length, so the mean of chunk means is the token mean.
    return sum(losses) / len(losses), losses, n_chunks * (context - 1)


def perplexity_metrics(model, token_ids, context, device) -> list[Metric]:
    loss, chunk_losses, n = heldout_loss(model, token_ids, context, device)
    how = f"held-out split, {n} predicted tokens in {len(chunk_losses)} chunks of {context}"
    return [
        make_metric("quality.loss", loss, Source.ANALYTIC, chunk_losses, note=how),
        make_metric("quality.perplexity", math.exp(loss), Source.ANALYTIC, note=how),
    ]
