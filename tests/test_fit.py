"""Will it fit: the memory a model needs for chat, from its folder alone, and the precision chosen."""

from __future__ import annotations

import pytest

from core import fit
from core.errors import UserError


def test_needs_from_the_headers_and_the_config(base_model):
    total, edges = fit.parameters(base_model)
    assert 134_000_000 < total < 136_000_000 and edges == 49152 * 576  # tied: the head is the embedding
    # 30 layers x 3 kv heads x 64 dims x 4096 tokens x 2 (k and v) x 2 bytes
    assert fit.cache_bytes(base_model) == 2 * 30 * 3 * 64 * 4096 * 2
    need = fit.needs(base_model)
    assert need["16bit"] > need["8bit"] > need["4bit"] > fit.MARGIN


def test_auto_takes_the_largest_precision_that_fits(base_model):
    need = fit.needs(base_model)
    assert fit.choose(base_model, need["16bit"])[0] == "16bit"
    assert fit.choose(base_model, need["16bit"] - 1)[0] == "8bit"
    precision, info = fit.choose(base_model, need["8bit"] - 1)
    assert precision == "4bit" and "4-bit: 16-bit needs" in fit.words(precision, info)
    with pytest.raises(UserError, match="even in 4-bit this model needs about"):
        fit.choose(base_model, need["4bit"] - 1)
    with pytest.raises(UserError, match="precision: 16bit needs about"):
        fit.choose(base_model, need["8bit"], "16bit")


# ---- the fit check before a job, from config.json alone -------------------------------------------
GiB = 2**30
SHAPES = {  # Llama-2 7B and 13B as published, and the embedded SmolLM2-135M
    "7b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096),
    "13b": dict(hidden_size=5120, num_hidden_layers=40, intermediate_size=13824, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096),
    "135m": dict(hidden_size=576, num_hidden_layers=30, intermediate_size=1536, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                 max_position_embeddings=8192),
}
BENCH_VOCAB = 49152  # the bench's shapes use SmolLM2's tokenizer (docs/BENCHMARKS.md)


def card(gib_free: float, gib_total: float | None = None, ram: float = 32) -> dict:
    return {"gpu": int(gib_free * GiB), "gpu_total": int((gib_total or gib_free) * GiB),
            "ram": int(ram * GiB), "ram_total": int(ram * GiB)}


def folder_with(tmp_path, name: str, **changes):
    import json

    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**SHAPES[name.split("-")[0]], **changes}), encoding="utf-8")
    return folder


def test_parameters_from_the_config_alone_match_the_published_counts(base_model):
    assert fit.shape(SHAPES["7b"])["total"] == 6_738_415_616  # Llama-2-7B
    assert fit.shape(SHAPES["13b"])["total"] == 13_015_864_320  # Llama-2-13B
    # The embedded model: the config's count equals its weight files' headers.
    assert fit.shape(fit.read_config(base_model))["total"] == fit.parameters(base_model)[0]


@pytest.mark.parametrize("name, preset_name, measured", [
    ("13b", "default", 9.44), ("13b", "tutorial", 11.23), ("7b", "default", 5.62), ("7b", "tutorial", 6.86)])
def test_training_estimate_is_within_15_percent_of_the_measured_peaks(name, preset_name, measured):
    # docs/BENCHMARKS.md, "Training speed and memory": the peaks these constants are calibrated on.
    from core.config import preset

    need = fit.train_needs({**SHAPES[name], "vocab_size": BENCH_VOCAB}, preset(preset_name, data="d", out="o"),
                           cuda=True, liger=True)
    assert need["peak"] / GiB == pytest.approx(measured, rel=0.15)
    assert need["gpu"] > need["peak"]  # the CUDA context and the allocator's slack come on top


def test_a_13b_run_fits_a_12_gib_card_and_says_what_would_fit_a_smaller_one(tmp_path):
    from core.config import preset

    folder = folder_with(tmp_path, "13b")
    cfg = preset("default", data="d", out="o")
    assert fit.check_train(cfg, folder, card(12), liger=True)["verdict"] == "fits"
    # A 7B at 1024 tokens on an 8 GiB card of which 6 GiB are free: no, but batch 2 would.
    seven = folder_with(tmp_path, "7b")
    long = cfg.replace(max_seq_length=1024)
    small = fit.check_train(long, seven, card(6, 8), liger=True)
    assert small["verdict"] == "no" and small["where"] == "gpu" and small["need"] > 6 * GiB
    changes = fit.remedies(long, seven, card(6, 8), liger=True)
    assert changes == {"batch_size": 2, "grad_accum": 8}  # each halving keeps the rows an update sees
    assert fit.check_train(long.replace(**changes), seven, card(6, 8), liger=True)["verdict"] == "fits"
    # Without 4-bit a 13B needs 26 GB of weights: on a 24 GiB card the first remedy is to turn it back on.
    plain = cfg.replace(quantization="none")
    assert fit.check_train(plain, folder, card(24), liger=True)["verdict"] in ("no", "never")
    assert fit.remedies(plain, folder, card(24), liger=True) == {"quantization": "4bit"}
    assert fit.describe({"quantization": "4bit", "batch_size": 2, "grad_accum": 8}) == \
        "turn on 4-bit, batch 2, accumulation 8"


def test_merge_and_chat_estimates(tmp_path):
    s13 = SHAPES["13b"]
    # Tensor by tensor, from bf16 to float16 with an r64 q/v adapter, no GPU whatever the machine has; peak
    # anonymous memory measured 0.90 GiB for the 7B shape and 1.21 GiB for the 13B (docs/BENCHMARKS.md).
    for name, measured in (("7b", 0.90), ("13b", 1.21)):
        r64_qv = fit.lora_parameters(fit.shape(SHAPES[name]), "q_proj,v_proj", 64)
        assert fit.merge_needs(SHAPES[name], r64_qv, "float16", exact=True, cuda=True)["host"] / GiB == \
            pytest.approx(measured, rel=0.15)
    assert fit.merge_needs(s13, 0, "float16", exact=True, cuda=True)["gpu"] == 0
    whole = fit.merge_needs(s13, 0, "float16", exact=False, cuda=False)["host"]  # peft's merge (DoRA, say)
    assert whole > 24 * GiB
    chat = fit.chat_needs(s13, cuda=True)
    assert chat["16bit"] > 24 * GiB > chat["8bit"] > chat["4bit"]  # a 24 GiB card chats with a 13B in 8-bit
    assert fit.chat_needs(SHAPES["7b"], cuda=True)["8bit"] < 16 * GiB


def test_a_run_far_past_the_machine_is_refused_in_one_line(tmp_path):
    from test_train import identity_dataset

    from core.config import preset
    from core.train import check_input

    huge = folder_with(tmp_path, "13b-huge", num_hidden_layers=400, hidden_size=16384, intermediate_size=53248)
    cfg = preset("default", model=str(huge), data=str(identity_dataset()), out=str(tmp_path / "run"))
    with pytest.raises(UserError, match=r"^memory: this run needs about .* so it will not fit; "):
        check_input(cfg)
    assert not (tmp_path / "run").exists()


def test_a_model_too_big_for_one_gpu_is_refused_on_several_in_words_that_say_why(tmp_path, monkeypatch):
    """Data-parallel training keeps a whole copy on each GPU: a user with two cards is told that they do not add up."""
    from test_train import identity_dataset

    from core import gpus
    from core.config import preset

    monkeypatch.setattr(fit, "machine", lambda on=None: {"gpu": 20 * GiB, "gpu_total": 24 * GiB, "ram": 30 * GiB,
                                                          "ram_total": 32 * GiB})
    huge = folder_with(tmp_path, "13b-as-70b", num_hidden_layers=80, hidden_size=8192, intermediate_size=28672,
                       num_key_value_heads=8, num_attention_heads=64)  # a Llama-2-70B: 35 GiB in 4-bit
    cfg = preset("default", model=str(huge), data=str(identity_dataset()), out=str(tmp_path / "run"), gpus="0,1")
    for n, said in ((1, False), (2, True)):
        monkeypatch.setattr(gpus, "count", lambda n=n: n)
        with pytest.raises(UserError, match=r"^memory: this run needs about .* of GPU memory") as e:
            fit.refuse_train(cfg, huge)
        assert ("each one trains a whole copy of the model" in str(e.value)) is said
        assert ("每块都要放下整个模型" in e.value.zh) is said


def test_int4_is_chosen_only_when_asked_and_checked_like_the_others(base_model):
    need = fit.needs(base_model)
    assert need["8bit"] > need["int4"] > fit.MARGIN
    # auto never picks int4 (its first load compiles: a choice to make knowingly); asked for, it is checked
    assert {fit.choose(base_model, free)[0] for free in (need["16bit"], need["8bit"], need["4bit"])} == {
        "16bit", "8bit", "4bit"}
    assert fit.choose(base_model, need["int4"], "int4")[0] == "int4"
    with pytest.raises(UserError, match="precision: int4 needs about"):
        fit.choose(base_model, need["int4"] - 1, "int4")


def test_a_model_spread_over_two_gpus_leaves_each_its_part_of_the_cache():
    """A 13B in 16 bits over two 16 GiB cards: each takes a share of the weights that leaves its part of the cache
    and a margin free; two 14 GiB cards together are too small."""
    GiB = 2**30
    weights, cache = int(24.2 * GiB), int(3.2 * GiB)
    need = weights + cache + fit.MARGIN
    shares = fit.spread({0: 16 * GiB, 1: 16 * GiB}, need, weights)
    assert set(shares) == {0, 1} and shares[0] == shares[1]
    assert weights <= sum(shares.values()) < 32 * GiB - cache - 2 * fit.MARGIN + GiB // 100
    uneven = fit.spread({0: 24 * GiB, 1: 8 * GiB}, need, weights)  # the freer card takes more
    assert uneven[0] == 3 * uneven[1] and sum(uneven.values()) >= weights
    assert fit.spread({0: 14 * GiB, 1: 14 * GiB}, need, weights) is None


def test_chat_gpus_are_checked_like_training_gpus():
    from core.config import GenerationConfig

    assert GenerationConfig(gpus="0, 1").validate() == []
    assert [str(m) for m in GenerationConfig(gpus="0,0").validate()] == ["gpus: '0,0' names a GPU twice"]
    assert "gpus" in GenerationConfig.help()


def test_the_free_memory_of_given_gpus_summed(monkeypatch):
    """machine() reads the jobs' GPU, or the GPUs asked about (a chat model's pick), their memory together."""
    from core import gpus, monitor

    cards = [{"index": i, "name": "NVIDIA H200", "memory_total_gb": 140.0, "memory_used_gb": u}
             for i, u in enumerate((100.0, 40.0, 10.0))]
    monkeypatch.setattr(monitor, "snapshot", lambda: {"gpus": cards})
    monkeypatch.setattr(gpus, "count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    GiB = 2**30
    assert fit.machine()["gpu"] == 40 * GiB and fit.machine()["gpu_total"] == 140 * GiB  # the first GPU
    assert fit.machine(on=[1])["gpu"] == 100 * GiB
    # Spread over two, the second GPU keeps a margin of its own, as the loader leaves it: the badge and the load agree.
    assert fit.machine(on=[1, 2])["gpu"] == 230 * GiB - fit.MARGIN and fit.machine(on=[1, 2])["gpu_total"] == 280 * GiB
