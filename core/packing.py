"""Packed rows without cross-talk and without a quadratic attention bill.

trl's "bfd" packing fills rows of up to max_seq_length tokens with whole examples. Its own
collator then flattens the whole micro-batch into ONE sequence (padding-free). With a
flash-attention kernel that is free, but with PyTorch's SDPA (what every machine has) the
attention is then computed over batch x max_seq_length tokens at once under a block mask:
at batch 8 x 512 that is a 4096 x 4096 attention per layer, 8 times the work of 8 rows of
512, and measured on an H100 it made larger batches *slower* (docs/BENCHMARKS.md).

This collator keeps the rows apart instead: a [batch, longest row] tensor whose
position_ids restart at 0 at every example and no attention mask. transformers turns
restarting position_ids into a per-row block-diagonal mask, so every example attends only
to itself, on any attention implementation, and attention stays linear in the batch size.
"""

from __future__ import annotations

from collections import deque

import torch


class PackedRows:
    """Collate trl-packed examples (input_ids, labels, seq_lengths) into separate rows."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        batch = len(examples)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = torch.as_tensor(e["input_ids"])
            labels[i, :n] = torch.as_tensor(e.get("labels", e["input_ids"]))
            lengths = list(e.get("seq_lengths") or [n])
            if width > n:
                lengths.append(width - n)  # the padding is a sequence of its own: nothing attends to it
            position_ids[i] = torch.cat([torch.arange(k) for k in lengths])
        # The first token of an example must not be predicted from the end of the previous one.
        labels[position_ids == 0] = -100
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


class Counting:
    """Wraps any collator and counts the real (non-pad) tokens of the batches training consumes.

    trl's own count reads the attention mask, which packed rows do not have. The data loader
    collates the next batch before the current step runs, so a batch's count waits in a queue until
    `consumed()` says a micro-batch was trained on (Progress calls it after every micro-batch).
    """

    def __init__(self, collator, model=None):
        self.collator, self.model, self.tokens = collator, model, 0
        self.pending: deque[int] = deque()

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        # The trainer collates evaluation batches with the same collator, in eval mode: not trained on.
        if self.model is None or self.model.training:
            mask = batch.get("attention_mask")
            self.pending.append(int(mask.sum()) if mask is not None else sum(len(e["input_ids"]) for e in examples))
        return batch

    def consumed(self) -> None:
        """One collated training batch went through a forward and backward pass."""
        if self.pending:
            self.tokens += self.pending.popleft()
