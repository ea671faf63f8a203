"""On a CUDA GPU: the whole path in 4-bit NF4, and the tutorial preset on a 13B-shaped model.

Run on the GPU machine with `python -m pytest -m gpu`; skipped on machines without CUDA.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from core.config import GenerationConfig, MergeConfig, PrepareConfig, preset

ASSETS = Path(__file__).resolve().parent.parent / "assets"
pytestmark = pytest.mark.gpu


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(dir=os.environ["QLORA_STUDIO_HOME"]))


def test_qlora_end_to_end_in_4bit(base_model):
    import torch

    from core.chat import Chat
    from core.data import prepare
    from core.merge import merge
    from core.train import train

    work = _scratch()
    prepare(PrepareConfig(input=str(ASSETS / "sample_zh.jsonl"), out=str(work / "data"), sample=64, model=base_model))
    status = train(preset("default", data=str(work / "data"), out=str(work / "run"), max_steps=12,
                          logging_steps=1, save_steps=0, learning_rate=1e-3, max_seq_length=256))
    assert status["state"] == "finished", status
    assert status["mode"].startswith("4-bit NF4"), status["mode"]
    lines = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if x.get("loss") is not None]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert all(x["gpu_memory_gb"] > 0 for x in lines)
    torch.cuda.empty_cache()

    report = merge(MergeConfig(adapter=str(work / "run" / "adapter"), out=str(work / "merged"), dtype="bfloat16"))
    assert (work / "merged" / "model.safetensors").is_file() or list((work / "merged").glob("*.safetensors"))
    assert not [p for p in work.rglob("*") if p.suffix in (".bin", ".pt", ".pkl") and "checkpoints" not in p.parts]
    chat = Chat()
    chat.load(str(work / "merged"))
    reply = chat.reply([], "2+3等于几？", GenerationConfig(temperature=0, max_new_tokens=24))
    chat.close()
    assert reply.strip(), report


def test_tutorial_preset_runs_on_a_13b_shaped_model(tokenizer):
    """A randomly initialised Llama-2-13B-shaped model (weights do not change the cost) under the tutorial preset."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.data import prepare
    from core.train import train

    work = _scratch()
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                      num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(work / "model-13b")
    tokenizer.save_pretrained(work / "model-13b")
    del model
    torch.cuda.empty_cache()
    prepare(PrepareConfig(input=str(ASSETS / "sample_zh.jsonl"), out=str(work / "data"), sample=0,
                          model=str(work / "model-13b")))
    status = train(preset("tutorial", model=str(work / "model-13b"), data=str(work / "data"),
                          out=str(work / "run"), max_steps=3, logging_steps=1, save_steps=0))
    assert status["state"] == "finished", status
    assert status["mode"] == "4-bit NF4 (fp16 compute)"
    lines = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(x["tokens_per_second"] > 0 and x["gpu_memory_gb"] > 5 for x in lines)
