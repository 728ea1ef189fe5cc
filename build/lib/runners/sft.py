"""Batches and held-out loss of supervised fine-tuning examples (the finetune
scenario's data side): prompt tokens carry label -100, so loss and metrics are
on response tokens only."""

from __future__ import annotations

import torch

from effbench.data.sft import IGNORE_INDEX, Encoded
from effbench.distributed import Distributed


def collate(rows: list[Encoded], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch: pad tokens have attention 0 and label -100."""
    length = length or max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class RowSampler:
    """Global batches of rows: a seeded shuffle per epoch, identical on every
    rank; each rank takes its contiguous slice of the global batch."""

    def __init__(self, rows: list[Encoded], global_rows: int, seed: int, dist: Distributed, pad_id: int,
                 seq_len: int):
        if len(rows) < global_rows:
            raise ValueError(f"{len(rows)} training rows, fewer than one global batch of {global_rows} "
                             "(lower scenario.micro_batch_size, or more data)")
        self.rows, self.global_rows, self.seed, self.dist = rows, global_rows, seed, dist
        self.pad_id, self.seq_len = pad_id, seq_len
        self.reset()

    def reset(self) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)
        self.order: list[int] = []
        self.epochs = 0

    def next(self) -> dict[str, torch.Tensor]:
        if len(self.order) < self.global_rows:  # a new epoch; the incomplete tail of the last is dropped
            self.order = torch.randperm(len(self.rows), generator=self.gen).tolist()
            self.epochs += 1
        batch, self.order = self.order[: self.global_rows], self.order[self.global_rows :]
        per_rank = self.global_rows // self.dist.world_size
        mine = batch[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]
        return collate([self.rows[i] for i in mine], self.pad_id, self.seq_len)


def spread(items: list, n: int) -> list:
    """n evenly spaced items (all when n ≥ len): a deterministic subset over every document."""
    return items if n >= len(items) else [items[i * len(items) // n] for i in range(n)]


@torch.no_grad()
def response_loss(model: torch.nn.Module, examples: list[Encoded], pad_id: int, device: torch.device,
                  batch_size: int = 16) -> tuple[float, list[float], int]:
    """Mean NLL per response token over the examples (prompt tokens are not
    scored). Returns (token-weighted mean, per-example means, scored tokens)."""
    total, count, per_example = 0.0, 0, []
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
        scored = (labels != IGNORE_INDEX).sum(dim=1)
        sums = nll.sum(dim=1)
        per_example += (sums / scored.clamp(min=1)).tolist()
        total += float(sums.sum())
        count += int(scored.sum())
    if count == 0:
        raise ValueError("no held-out response tokens to score")
    return total / count, per_example, count
