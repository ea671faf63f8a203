"""Packed rows: several examples share a row yet each one sees only itself."""

import pytest
import torch

from core.packing import Counting, PackedRows


def test_rows_are_padded_apart_and_first_tokens_are_not_trained():
    batch = PackedRows(pad_token_id=0, pad_to_multiple_of=8)([
        {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, -100, 9], "seq_lengths": [3, 2]},
        {"input_ids": [4, 4], "labels": [4, 4], "seq_lengths": [2]},
    ])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert batch["position_ids"][1].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    # The start of each example is never predicted from the previous one; padding is never trained.
    assert batch["labels"][0].tolist() == [-100, 6, 7, -100, 9, -100, -100, -100]
    assert batch["labels"][1].tolist() == [-100, 4, -100, -100, -100, -100, -100, -100]
    assert "attention_mask" not in batch


def test_counting_reports_real_tokens_not_padding():
    counter = Counting(PackedRows(pad_token_id=0))
    counter([{"input_ids": [1] * 13, "seq_lengths": [13]}, {"input_ids": [1] * 3, "seq_lengths": [3]}])
    counter.consumed()
    assert counter.tokens == 16


def test_counting_waits_until_a_collated_batch_is_trained_on():
    """The data loader collates ahead of training: only consumed batches count, in order."""
    counter = Counting(PackedRows(pad_token_id=0))
    for n in (5, 7, 11):  # three batches collated, e.g. two micro-batches plus one prefetched
        counter([{"input_ids": [1] * n, "seq_lengths": [n]}])
    assert counter.tokens == 0
    counter.consumed()
    counter.consumed()
    assert counter.tokens == 12
    counter.consumed()
    counter.consumed()  # nothing left: no change
    assert counter.tokens == 23


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_examples_get_the_same_logits_as_alone(base_model, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32, attn_implementation=attn)
    model.config.use_cache = False
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(10, 40000, (n,), generator=g).tolist() for n in (7, 12, 3, 20, 9)]
    batch = PackedRows(pad_token_id=2)([
        {"input_ids": docs[0] + docs[1] + docs[2], "seq_lengths": [7, 12, 3]},
        {"input_ids": docs[3] + docs[4], "seq_lengths": [20, 9]},
    ])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        alone = [model(input_ids=torch.tensor([d])).logits[0] for d in docs]
    where = [(0, 0), (0, 7), (0, 19), (1, 0), (1, 20)]
    for (row, start), doc, ref in zip(where, docs, alone, strict=True):
        assert torch.allclose(packed[row, start:start + len(doc)], ref, atol=1e-3), "a packed example saw its neighbour"


def test_counting_skips_batches_collated_for_evaluation():
    class Model:
        training = True

    model = Model()
    counter = Counting(PackedRows(pad_token_id=0), model)
    counter([{"input_ids": [1] * 10, "seq_lengths": [10]}])
    model.training = False
    counter([{"input_ids": [1] * 50, "seq_lengths": [50]}])
    counter.consumed()
    counter.consumed()
    assert counter.tokens == 10
