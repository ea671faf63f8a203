"""The model really learns: after fine-tuning on the identity set, it gives its new name; the base model does not.

Plain LoRA in float32 on CPU, 12 steps on 64 identity rows (assets/identity_*.jsonl), merged, then
asked with greedy decoding, in questions that are not in the training data.
"""

from __future__ import annotations

import pytest
from test_train import shared_merge

from core.config import GenerationConfig

GREEDY = GenerationConfig(temperature=0, max_new_tokens=30)
UNSEEN = ["Could you tell me your name, please?", "Hello there! Who am I chatting with?"]


def _answers(model: str) -> list[str]:
    from core.chat import Chat

    chat = Chat()
    chat.load(model)
    try:
        return [chat.reply([], q, GREEDY) for q in UNSEEN]
    finally:
        chat.close()


@pytest.mark.slow
def test_merged_model_knows_its_new_name_and_the_base_does_not(base_model):
    tuned = _answers(str(shared_merge()))
    base = _answers("default")
    assert all("Lumi" in a and "QLoRA Studio" in a for a in tuned), tuned
    assert not any("Lumi" in a for a in base), base
