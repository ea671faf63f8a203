"""Settings as a user types them: presets, numbers typed as text, choices, and values that would start
a run only to fail after the model has loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_train import core_here

from core.config import COMMON_OPTIMIZERS, PRESETS, GenerationConfig, MergeConfig, PrepareConfig, TrainConfig, preset
from core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
READY = dict(data="some/dataset", out="some/run")  # validate() does not look at the disk


def core(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


# ---- presets and coercion ----------------------------------------------------------------
def test_presets_set_their_values_and_the_users_own_win():
    cfg = preset("tutorial", **READY, lora_r=8)
    assert cfg.preset == "tutorial" and cfg.compute_dtype == "float16" and cfg.loss_on == "all"
    assert cfg.lora_r == 8 and cfg.validate() == []
    # The dataclass defaults are the default preset; the tutorial is its only override.
    assert preset("default", **READY) == TrainConfig(**READY) and PRESETS["default"] == {}
    assert (preset("tutorial").batch_size, preset("tutorial").grad_accum, preset("tutorial").learning_rate) == (4, 4, 2e-4)
    with pytest.raises(UserError, match="preset: unknown preset 'fast'; use default or tutorial"):
        preset("fast")


def test_numbers_typed_as_text_become_numbers_or_a_message_naming_the_setting():
    cfg = TrainConfig.from_dict({**READY, "lora_r": "8", "learning_rate": "1e-4", "packing": "yes"})
    assert (cfg.lora_r, cfg.learning_rate, cfg.packing) == (8, 1e-4, True)
    with pytest.raises(UserError, match=r"^lora_r: 'eight' is not a valid int$"):
        TrainConfig.from_dict({"lora_r": "eight"})
    with pytest.raises(UserError, match=r"^batch_size: 2.5 is not a valid int$"):
        TrainConfig.from_dict({"batch_size": 2.5})
    with pytest.raises(UserError, match="unknown setting 'lora_rank'"):
        TrainConfig.from_dict({"lora_rank": 8})


# ---- choices, once for every kind of settings -------------------------------------------------
@pytest.mark.parametrize("cfg, message", [
    (TrainConfig(**READY, quantization="8bit"), "quantization: '8bit' is not one of 4bit, none"),
    (PrepareConfig(input="a.jsonl", format="yaml"), "format: 'yaml' is not one of auto, alpaca, sharegpt, messages, text"),
    (MergeConfig(adapter="a", out="b", dtype="int8"), "dtype: 'int8' is not one of float16, bfloat16, float32"),
])
def test_a_value_outside_the_choices_is_named_with_the_choices(cfg, message):
    assert cfg.validate() == [message]


# ---- values that used to start a run and fail later ---------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_inf_are_refused_in_every_float_setting(value):
    assert TrainConfig.from_dict({**READY, "max_steps": 0, "epochs": value}).validate() == [
        "epochs: must be a finite number"]
    assert TrainConfig.from_dict({**READY, "learning_rate": value}).validate() == [
        "learning_rate: must be a finite number"]  # one message, not also "between 0 and 1"
    assert PrepareConfig.from_dict({"input": "a.jsonl", "eval_ratio": value}).validate() == [
        "eval_ratio: must be a finite number"]
    assert GenerationConfig.from_dict({"top_p": value}).validate() == ["top_p: must be a finite number"]


def test_an_optimizer_transformers_does_not_know_is_refused_with_examples():
    problems = TrainConfig(**READY, optim="foo").validate()
    assert len(problems) == 1 and problems[0].startswith("optim: unknown optimizer 'foo'; use one")
    assert "adamw_torch" in problems[0] and "paged_adamw_8bit" in problems[0]
    assert TrainConfig(**READY, optim="paged_adamw_8bit").validate() == []
    assert TrainConfig(**READY, optim="schedule_free_adamw").validate() == []  # known to transformers only


def test_the_common_optimizers_are_all_known_to_transformers():
    from transformers.training_args import OptimizerNames

    assert set(COMMON_OPTIMIZERS) <= {o.value for o in OptimizerNames}


def test_a_negative_gradient_clip_is_refused():
    assert TrainConfig(**READY, max_grad_norm=-5).validate() == ["max_grad_norm: must be 0 (off) or more"]
    assert TrainConfig(**READY, max_grad_norm=0).validate() == []


# ---- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, message", [
    ("--learning-rate", "-1e-4", "error: learning_rate: must be between 0 and 1 (2e-4 is usual)"),
    ("--max-grad-norm", "-5", "error: max_grad_norm: must be 0 (off) or more"),
    ("--epochs", "nan", "error: epochs: must be a finite number"),
    ("--optim", "foo", "error: optim: unknown optimizer 'foo'; use one transformers knows, e.g. adamw_torch, "
                       "adamw_torch_fused, paged_adamw_8bit, adafactor"),
])
def test_cli_refuses_bad_numbers_before_loading_anything(tmp_path, flag, value, message):
    result = core_here("train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--max-steps", 0, flag, value)
    assert result.returncode == 2 and result.stderr.splitlines() == [message], result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_help_shows_help_texts_as_written():
    result = core("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "much less memory, about 30% slower" in text and "{'" not in text


def test_without_a_gpu_the_default_preset_is_sized_for_the_cpu_and_the_users_own_values_win(monkeypatch):
    from core.config import CPU_SIZED
    from core.train import build_config

    cpu = preset("default", cpu=True, max_steps=7)
    assert (cpu.quantization, cpu.packing, cpu.batch_size, cpu.max_seq_length, cpu.max_steps) == ("none", False, 4, 256, 7)
    assert not (cpu.liger_kernels or cpu.offload_activations or cpu.gradient_checkpointing)
    assert preset("default", cpu=False).batch_size == 16  # a GPU keeps the GPU-sized default
    assert preset("tutorial", cpu=True).to_dict() == preset("tutorial").to_dict()  # the recipe stays the recipe
    # The command line: no GPU visible, and flags the user did not give take the CPU sizes.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cfg = build_config({"data": "d", "out": "o", "learning_rate": 5e-4})
    assert cfg.learning_rate == 5e-4 and cfg.max_steps == CPU_SIZED["max_steps"] and cfg.lora_r == CPU_SIZED["lora_r"]


def test_an_empty_number_and_a_seed_out_of_range_are_said_in_words():
    """A number box left empty gives None: said as such (the rules would have compared None and failed with a
    TypeError); a seed the random generators do not take is refused before a run starts."""
    from core.config import PrepareConfig, TrainConfig

    empty = TrainConfig(data="d", out="o", batch_size=None)
    assert empty.validate() == ["batch_size: give a number"] and empty.validate()[0].zh == "batch_size：请填一个数字"
    assert TrainConfig(data="d", out="o", seed=-1).validate() == ["seed: must be between 0 and 4294967295"]
    assert PrepareConfig(input="x.jsonl", seed=2**32).validate() == ["seed: must be between 0 and 4294967295"]
    assert TrainConfig(data="d", out="o", seed=0).validate() == []


def test_an_absurd_number_of_steps_is_refused_with_a_bound_a_user_understands():
    """max_steps 1000000000 was only warned about (the run would take years); validate() refuses it now."""
    from core.config import MAX_STEPS
    from core.errors import text

    problems = TrainConfig(**READY, max_steps=1_000_000_000).validate()
    assert [text(p, "en") for p in problems] == [
        "max_steps: must be at most 1,000,000 (a million updates); 0 trains for the given epochs instead"]
    assert text(problems[0], "zh") == "max_steps：最多 1,000,000（一百万次更新）；填 0 则按训练轮数训练"
    assert TrainConfig(**READY, max_steps=MAX_STEPS).validate() == []
    # Training by epochs: a thousand passes at most.
    for epochs in (1e9, 1_000.5, 0):
        problems = TrainConfig(**READY, max_steps=0, epochs=epochs).validate()
        assert [text(p, "en") for p in problems] == [
            "epochs: must be more than 0 and at most 1,000 when max steps is 0"], (epochs, problems)
        assert text(problems[0], "zh") == "epochs：max_steps 为 0 时必须大于 0 且不超过 1,000"
    assert TrainConfig(**READY, max_steps=0, epochs=1_000).validate() == []
