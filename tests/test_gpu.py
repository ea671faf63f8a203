"""The same end to end on a CUDA GPU, in 4-bit NF4 (QLoRA proper): train, merge in 16 bits, chat.

Skipped on machines without CUDA (see conftest); run on the GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import json

import pytest
from test_train import FAST, identity_dataset, pickles, scratch

from core.config import GenerationConfig, MergeConfig, preset

pytestmark = pytest.mark.gpu


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_qlora_4bit_learns_merges_and_chats(base_model):
    from core.chat import Chat
    from core.merge import merge
    from core.train import train

    run = scratch() / "run4bit"
    result = train(preset("default", data=str(identity_dataset()), out=str(run), max_steps=16,
                          **{**FAST, "quantization": "4bit", "compute_dtype": "auto", "gradient_checkpointing": True}))
    assert result["state"] == "finished", result
    assert result["mode"].startswith("4-bit NF4") and result["device"].startswith("cuda:0")
    lines = _metrics(run)
    losses = [x["loss"] for x in lines]
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses
    assert all(x["gpu_memory_gb"] and x["gpu_memory_gb"] > 0 for x in lines)
    assert pickles(run / "adapter") == []

    out = scratch() / "merged4bit"
    report = merge(MergeConfig(adapter=str(run / "adapter"), out=str(out), dtype="float16"))
    assert report["ok"] and report["device"].startswith("cuda"), report
    assert pickles(out) == []
    chat = Chat()
    chat.load(str(out))
    try:
        reply = chat.reply([], "Could you tell me your name, please?", GenerationConfig(temperature=0, max_new_tokens=30))
    finally:
        chat.close()
    assert "Lumi" in reply, reply


def test_tutorial_recipe_runs_in_fp16_with_the_grad_scaler():
    from core.train import train

    run = scratch() / "tutorial"
    result = train(preset("tutorial", data=str(identity_dataset()), out=str(run), max_steps=4, logging_steps=1,
                          save_steps=0))
    assert result["state"] == "finished", result
    assert result["mode"] == "4-bit NF4 (fp16 compute)"
    losses = [x["loss"] for x in _metrics(run)]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)


def test_default_recipe_packs_rows_on_the_gpu():
    from core.train import train

    run = scratch() / "packed"
    result = train(preset("default", data=str(identity_dataset()), out=str(run), max_steps=3, logging_steps=1,
                          save_steps=0, max_seq_length=256))
    assert result["state"] == "finished", result
    first = _metrics(run)[0]
    assert first["tokens"] > 0 and first["tokens_per_second"] > 0


def test_monitor_sees_the_gpu():
    from core import monitor

    snap = monitor.snapshot()
    assert snap["gpus"] and snap["gpus"][0]["memory_total_gb"] > 10
    assert "gpu_note" not in snap
