"""A first run teaches something: the CPU-sized default on the sample data answers unseen questions better than the base.

The sample data the Data tab offers (assets/identity.jsonl: a new name, "Lumi, made by QLoRA
Studio", in English and Chinese) is prepared with the Data tab's defaults (a tenth kept apart for
evaluation) and trained with exactly the default preset sized for a CPU, as the panel and the
command line start it without a GPU. "Better" means: more answers to questions that are in
neither the training nor the eval split that contain the fact taught (the name), greedy decoding;
and the run's own check (learned.json) finds a lower eval loss than the base model's.
"""

from __future__ import annotations

import pytest
from test_train import ASSETS, scratch

from core.config import GenerationConfig, PrepareConfig, preset

GREEDY = GenerationConfig(temperature=0, max_new_tokens=30)
UNSEEN = ["Could you tell me your name, please?", "Hello there! Who am I chatting with?", "请问怎么称呼你？"]


def _named(model: str, adapter: str | None = None) -> list[str]:
    from core.chat import Chat

    chat = Chat()
    chat.load(model, adapter)
    try:
        return [chat.reply([], q, GREEDY) for q in UNSEEN]
    finally:
        chat.close()


@pytest.mark.slow
def test_the_cpu_default_on_the_sample_data_answers_unseen_questions_better_than_the_base(base_model):
    from core import learned
    from core.data import prepare
    from core.train import train

    sample = (ASSETS / "identity.jsonl").read_text(encoding="utf-8")
    assert not any(q in sample for q in UNSEEN)
    work = scratch()
    data = prepare(PrepareConfig(input=str(ASSETS / "identity.jsonl"), out=str(work / "data")))
    assert data["counts"]["eval"] > 0
    result = train(preset("default", cpu=True, data=str(work / "data"), out=str(work / "run")))
    assert result["state"] == "finished", result

    check = learned.read(work / "run")
    assert check["verdict"] == "better" and check["eval_loss_after"] < check["eval_loss_before"], check
    held_out = check["samples"]
    assert held_out and sum("Lumi" in s["tuned"] for s in held_out) > sum("Lumi" in s["base"] for s in held_out)

    tuned = _named("default", str(work / "run" / "adapter"))
    base = _named("default")
    assert sum("Lumi" in a for a in tuned) >= 2 and not any("Lumi" in a for a in base), (tuned, base)


def test_the_runs_own_questions_are_answered_in_one_batch_as_each_would_be_alone(base_model, tokenizer, monkeypatch):
    """learned.answers pads the prompts on the left and answers them together: each answer is the one greedy
    decoding gives for its prompt alone, cut at the end of its turn; a row that ended early carries no padding."""
    import torch
    from transformers import AutoModelForCausalLM

    from core import learned
    from core.template import reply_text

    monkeypatch.setattr(learned, "ANSWER_TOKENS", 12)
    prompts = ["<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\n请用一句话介绍一下长城的历史和它的长度。<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nSay only: yes<|im_end|>\n<|im_start|>assistant\n"]
    stops = ["<|im_end|>"]
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).eval()
    together = learned.answers(model, tokenizer, prompts, stops)
    alone = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        made = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.eos_token_id)
        alone.append(reply_text(tokenizer.decode(made[0, ids.shape[1]:], skip_special_tokens=False), stops))
    assert together == alone
    assert all(a and "<|endoftext|>" not in a and "<|im_end|>" not in a for a in together), together
    assert learned.answers(model, tokenizer, [], stops) == []
