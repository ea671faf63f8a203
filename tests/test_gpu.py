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


@pytest.fixture(scope="module")
def gpu_tokenizer():
    """The embedded model's tokenizer; on a GPU machine without the embedded package (its 98 MB GGUF
    file cannot always be carried there), the same tokenizer files from QLORA_STUDIO_GPU_TOKENIZER."""
    from core import models
    from core.errors import UserError

    try:
        return models.load_tokenizer("default")
    except UserError:
        folder = os.environ.get("QLORA_STUDIO_GPU_TOKENIZER")
        if not folder:
            pytest.skip("no embedded model and no QLORA_STUDIO_GPU_TOKENIZER")
        return models.load_tokenizer(folder)


def _random_llama(tokenizer, folder: Path, **shape) -> Path:
    """A randomly initialised Llama of the given shape, saved with the tokenizer: costs what real weights cost."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


@pytest.fixture(scope="module")
def gpu_model(gpu_tokenizer):
    """The embedded model if it is installed here, else a random model of its exact shape."""
    from core import models
    from core.errors import UserError

    try:
        return str(models.embedded())
    except UserError:
        return str(_random_llama(gpu_tokenizer, _scratch() / "smollm2-shape", hidden_size=576, intermediate_size=1536,
                                 num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                 tie_word_embeddings=True))


def test_qlora_end_to_end_in_4bit(gpu_model):
    import torch

    from core.chat import Chat
    from core.data import prepare
    from core.merge import merge
    from core.train import train

    work = _scratch()
    prepare(PrepareConfig(input=str(ASSETS / "sample_zh.jsonl"), out=str(work / "data"), sample=64, model=gpu_model))
    status = train(preset("default", model=gpu_model, data=str(work / "data"), out=str(work / "run"), max_steps=12,
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
    assert next(iter(chat.stream([], "hi", GenerationConfig(max_new_tokens=4))), None) is not None
    reply = chat.reply([], "2+3等于几？", GenerationConfig(temperature=0, max_new_tokens=24))
    chat.close()
    assert reply.strip(), report


def test_tutorial_preset_runs_on_a_13b_shaped_model(gpu_tokenizer):
    """A randomly initialised Llama-2-13B-shaped model (weights do not change the cost) under the tutorial preset."""
    from core.data import prepare
    from core.train import train

    work = _scratch()
    _random_llama(gpu_tokenizer, work / "model-13b", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                  num_attention_heads=40, num_key_value_heads=40, tie_word_embeddings=False)
    prepare(PrepareConfig(input=str(ASSETS / "sample_zh.jsonl"), out=str(work / "data"), sample=0,
                          model=str(work / "model-13b")))
    status = train(preset("tutorial", model=str(work / "model-13b"), data=str(work / "data"),
                          out=str(work / "run"), max_steps=3, logging_steps=1, save_steps=0))
    assert status["state"] == "finished", status
    assert status["mode"] == "4-bit NF4 (fp16 compute)"
    lines = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(x["tokens_per_second"] > 0 and x["gpu_memory_gb"] > 5 for x in lines)
