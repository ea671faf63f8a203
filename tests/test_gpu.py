"""The same end to end on a CUDA GPU, in 4-bit NF4 (QLoRA proper): train, merge in 16 bits, chat.

Skipped on machines without CUDA (see conftest); run on the GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import json

import pytest
from test_train import FAST, ROOT, identity_dataset, pickles, scratch

from core.config import GenerationConfig, MergeConfig, PrepareConfig, preset

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


def test_tutorial_recipe_runs_in_fp16_with_the_grad_scaler(base_model):  # the embedded model, or skipped
    from core.train import train

    run = scratch() / "tutorial"
    result = train(preset("tutorial", data=str(identity_dataset()), out=str(run), max_steps=4, logging_steps=1,
                          save_steps=2))
    assert result["state"] == "finished", result
    assert result["mode"] == "4-bit NF4 (fp16 compute)"
    losses = [x["loss"] for x in _metrics(run)]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)
    assert (run / "checkpoints" / "checkpoint-2" / "scaler.safetensors").is_file()
    assert pickles(run) == []


def test_default_recipe_packs_rows_on_the_gpu(base_model):  # the embedded model, or skipped
    from core.train import train

    run = scratch() / "packed"
    result = train(preset("default", data=str(identity_dataset()), out=str(run), max_steps=3, logging_steps=1,
                          save_steps=0, max_seq_length=256))
    assert result["state"] == "finished", result
    first = _metrics(run)[0]
    assert first["tokens"] > 0 and first["tokens_per_second"] > 0


@pytest.fixture(scope="module")
def liger_applied():
    """What training with Liger's kernels does to this process: transformers' Llama code patched for every model."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    apply_liger_kernel_to_llama()


def test_liger_patches_left_by_a_fixture_do_not_reach_the_test(liger_applied):
    """conftest's guard with Liger's own patches (the panel trains in a child; tests train in this process)."""
    from transformers.models.llama import modeling_llama

    for code in (modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaForCausalLM.forward, modeling_llama.LlamaMLP):
        assert code.__module__ == modeling_llama.__name__, code


def test_monitor_sees_the_gpu():
    from core import monitor

    snap = monitor.snapshot()
    assert snap["gpus"] and snap["gpus"][0]["memory_total_gb"] > 10
    assert "gpu_note" not in snap


# ---- random weights of real shapes: these run on a GPU machine without the embedded package ----
@pytest.fixture(scope="module")
def any_tokenizer():
    """The embedded model's tokenizer, or the same files carried in QLORA_STUDIO_GPU_TOKENIZER."""
    import os

    from transformers import AutoTokenizer

    from core import models
    from core.errors import UserError

    try:
        return models.load_tokenizer("default")
    except UserError:
        if not os.environ.get("QLORA_STUDIO_GPU_TOKENIZER"):
            pytest.skip("neither the embedded model nor QLORA_STUDIO_GPU_TOKENIZER is available")
        return AutoTokenizer.from_pretrained(os.environ["QLORA_STUDIO_GPU_TOKENIZER"])


_BUILT: dict[str, str] = {}  # folder name -> the folder built for it in this test session


def _random_llama(tokenizer, folder, **shape):
    """A randomly initialised Llama of a real shape (weights do not change the cost), with the tokenizer.

    Built once a test session for each folder name: the modules that share a shape share its folder (a second
    13B copy filled the GPU machine's 64 GB disk). With QLORA_STUDIO_GPU_MODELS set, a folder of that name there
    is used as it is (the benchmark builds the same shapes; writing 26 GB twice would only cost time)."""
    import os
    from pathlib import Path

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    name = Path(folder).name
    built = Path(os.environ.get("QLORA_STUDIO_GPU_MODELS", "/nonexistent")) / name
    if (built / "config.json").is_file():
        return str(built)
    if name in _BUILT and (Path(_BUILT[name]) / "config.json").is_file():
        return _BUILT[name]

    cfg = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    _BUILT[name] = str(folder)
    return str(folder)


@pytest.fixture(scope="module")
def small_random_model(any_tokenizer):
    """SmolLM2-135M's shape on random weights, and the sample data prepared for it."""
    from core.data import prepare

    work = scratch()
    model = _random_llama(any_tokenizer, work / "smollm2-shape", hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    prepare(PrepareConfig(input=str(ROOT / "assets" / "sample_zh.jsonl"), out=str(work / "data"), sample=64, model=model))
    return model, str(work / "data")


def test_4bit_pipeline_on_random_weights_of_the_default_shape(small_random_model):
    from core.chat import Chat
    from core.merge import merge
    from core.train import train

    model, data = small_random_model
    work = scratch()
    result = train(preset("default", model=model, data=data, out=str(work / "run"), max_steps=12,
                          logging_steps=1, save_steps=6, learning_rate=1e-3, max_seq_length=256))
    assert result["state"] == "finished" and result["mode"].startswith("4-bit NF4"), result
    losses = [x["loss"] for x in _metrics(work / "run")]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert pickles(work / "run") == []
    report = merge(MergeConfig(adapter=str(work / "run" / "adapter"), out=str(work / "merged"), dtype="bfloat16"))
    assert report["ok"] and report["device"].startswith("cuda"), report
    assert pickles(work / "merged") == []
    chat = Chat()
    chat.load(str(work / "merged"))
    try:
        assert chat.reply([], "你好", GenerationConfig(temperature=0, max_new_tokens=8)) is not None
    finally:
        chat.close()


def test_tutorial_fp16_checkpoints_hold_the_grad_scaler_and_resume_random_weights(small_random_model):
    """fp16 compute: the grad scaler's state goes into the checkpoint as safetensors and comes back on resume."""
    from core.checkpoints import load_state
    from core.train import train

    model, data = small_random_model
    run = scratch() / "tutorial"
    settings = dict(model=model, data=data, out=str(run), logging_steps=1, save_steps=2)
    result = train(preset("tutorial", max_steps=4, **settings))
    assert result["state"] == "finished" and result["mode"] == "4-bit NF4 (fp16 compute)", result
    checkpoint = run / "checkpoints" / "checkpoint-4"
    scaler = load_state(checkpoint, "scaler")
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler, scaler
    assert pickles(run) == []
    resumed = train(preset("tutorial", max_steps=6, resume=True, **settings))
    assert resumed["state"] == "finished" and resumed["step"] == 6, resumed
    steps = [x["step"] for x in _metrics(run)]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    assert all(0 < x["loss"] < 20 for x in _metrics(run))
    assert pickles(run) == []


def test_offloaded_activations_train_the_same_random_weights(small_random_model):
    """Activations kept in CPU memory are the same numbers: the losses match a run without offloading."""
    from core.train import train

    model, data = small_random_model
    losses = {}
    for offload in (False, True):
        run = scratch() / f"offload-{offload}"
        result = train(preset("default", model=model, data=data, out=str(run), max_steps=3, logging_steps=1,
                              save_steps=0, offload_activations=offload, lora_dropout=0.0))
        assert result["state"] == "finished", result
        losses[offload] = [x["loss"] for x in _metrics(run)]
    assert losses[True] == pytest.approx(losses[False], rel=2e-2), losses


@pytest.fixture(scope="module")
def model_13b(any_tokenizer):
    """Llama-2-13B's shape on random weights (built once for the tests that need it)."""
    return _random_llama(any_tokenizer, scratch() / "llama2-13b-shape", hidden_size=5120, intermediate_size=13824,
                         num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                         tie_word_embeddings=False)


def test_tutorial_preset_on_a_13b_shaped_model_logs_metrics(model_13b):
    from core.data import prepare
    from core.train import train

    work = scratch()
    model = model_13b
    prepare(PrepareConfig(input=str(ROOT / "assets" / "sample_zh.jsonl"), out=str(work / "data"), sample=0, model=model))
    result = train(preset("tutorial", model=model, data=str(work / "data"), out=str(work / "run"), max_steps=3,
                          logging_steps=1, save_steps=0))
    assert result["state"] == "finished" and result["mode"] == "4-bit NF4 (fp16 compute)", result
    lines = _metrics(work / "run")
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(x["tokens_per_second"] > 0 and x["gpu_memory_gb"] > 5 for x in lines)


def test_offload_brings_back_the_same_numbers_and_frees_gpu_memory():
    """core.offload on a checkpointed stack: the same gradients, layer inputs out of GPU memory meanwhile."""
    import contextlib

    import torch
    from torch.utils.checkpoint import checkpoint

    from core.offload import Arena, Offload

    torch.manual_seed(0)
    layers = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.GELU(),
                                                     torch.nn.Linear(2048, 1024)) for _ in range(12)).cuda()
    x = torch.randn(4096, 1024, device="cuda", requires_grad=True)  # 16 MB: every layer input is offloaded

    def step(ctx):
        for p in [x, *layers.parameters()]:
            p.grad = None
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with ctx:
            h = x
            for layer in layers:
                h = h + checkpoint(layer, h, use_reentrant=False)
            loss = h.square().sum()  # gradients of order one: a wrong number shows
            torch.cuda.synchronize()
            torch.empty(1, device="cuda")  # the allocator settles blocks that waited for the copy stream
            held = torch.cuda.memory_allocated() - before  # what the forward pass left on the GPU
            loss.backward()
        torch.cuda.synchronize()
        return [p.grad.clone() for p in [x, *layers.parameters()]], held

    plain, plain_memory = step(contextlib.nullcontext())
    offload = Offload(Arena(96 << 20), keep=2, ahead=2)  # room for 6 of the 12 inputs; the rest pinned one by one
    for _ in range(2):  # twice: the second micro-batch reuses the pinned block
        grads, memory = step(offload)
        for a, b in zip(plain, grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        # the inputs of layers 1 to 10 (16 MB each) left the GPU during the forward pass (x stays: the test holds it)
        assert plain_memory - memory >= 10 * 16 * 2**20 - 2**20, (plain_memory, memory)
    # per micro-batch: out go the 12 layer inputs and the output (saved by square); the newest 2 never come back
    assert (offload.bytes_out, offload.bytes_back) == (2 * 13 * 16 * 2**20, 2 * 11 * 16 * 2**20)


def test_out_of_gpu_memory_is_one_line_in_training_merge_and_chat(small_random_model):
    """A real CUDA out-of-memory (a 0.15 GiB cap: the model alone is 0.27 GiB in 16 bits) in training, peft's
    merge and 16-bit chat: one line, exit code 1, no traceback. The tensor-by-tensor merge needs no GPU, and
    chat on Auto measures first and refuses in words."""
    import subprocess
    import sys

    from core.train import train

    model, data = small_random_model
    run = scratch() / "for-merge"
    assert train(preset("default", model=model, data=data, out=str(run), max_steps=1, save_steps=0,
                        max_seq_length=128))["state"] == "finished"
    dora = scratch() / "dora"  # an adapter only peft's merge can fold: the whole model goes to the GPU
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16),
                   LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)).save_pretrained(dora)
    capped = [sys.executable, str(ROOT / "bench" / "budget.py"), "0.15", "-m", "core"]
    jobs = {
        "train": ["train", "--model", model, "--data", data, "--out", str(scratch() / "oom"), "--max-steps", "2",
                  "--quantization", "none", "--compute-dtype", "float32"],
        "merge": ["merge", "--adapter", str(run / "adapter"), "--out", str(scratch() / "merged"), "--dtype", "float32"],
        "merge through peft": ["merge", "--adapter", str(dora), "--base", model, "--out", str(scratch() / "merged-oom"),
                               "--dtype", "float32"],
        "chat": ["chat", "--model", model, "--prompt", "你好"],
        "chat in 16-bit, asked for": ["chat", "--model", model, "--prompt", "你好", "--precision", "16bit"],
    }
    for name, argv in jobs.items():
        done = subprocess.run([*capped, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert "Traceback" not in done.stdout + done.stderr, (name, done.stdout[-3000:], done.stderr[-3000:])
        if name == "merge":  # tensor by tensor on the CPU: the capped GPU is not needed at all
            report = json.loads(done.stdout.strip().splitlines()[-1])
            assert done.returncode == 0 and report["ok"] and report["method"] == "tensor by tensor", report
            continue
        said = done.stderr if name != "train" else json.loads(done.stdout.strip().splitlines()[-1])["error"]
        assert name == "train" or said.count("\n") == 1, (name, said)
        if name == "chat":  # chat measures before it loads: refused in words (exit 2) rather than run out
            assert done.returncode == 2 and "even in 4-bit this model needs about" in said, said
            continue
        assert done.returncode == 1, (name, done.stdout[-1500:], done.stderr[-1500:])
        assert "out of GPU memory" in said, (name, said)


@pytest.mark.parametrize("cap_gib", [24, 14])  # 14 after 24: the 8-bit 13B closed gives its memory back (H200, 12-01)
def test_chat_loads_a_13b_in_a_precision_that_fits_the_card_and_answers(model_13b, cap_gib):
    """Under a 24 GiB cap (a consumer card) the 13B loads in 8-bit; under 14 GiB in 4-bit; both answer."""
    import torch

    from core.chat import Chat

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()  # earlier tests in this process trained a 13B
    torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / total, 0)
    chat = Chat()
    try:
        chat.load(model_13b)
        reply = chat.reply([], "你好", GenerationConfig(temperature=0, max_new_tokens=8))
        peak = torch.cuda.max_memory_allocated() / 2**30
    finally:  # the cap first: a failing close must not leave it on the tests after this one
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        chat.close()
    expected = {24: "8bit", 14: "4bit"}[cap_gib]
    assert chat.fitted["precision"] == expected and chat.fitted["need"]["16bit"] > cap_gib * 2**30, chat.fitted
    assert isinstance(reply, str) and peak < cap_gib, peak


def test_chat_refuses_in_words_when_even_4bit_does_not_fit(model_13b):
    import torch

    from core.chat import Chat
    from core.errors import UserError

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(4 * 2**30 / total, 0)
    try:
        with pytest.raises(UserError, match="even in 4-bit this model needs about"):
            Chat().load(model_13b)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)


def assert_greedy_like_plain(chat, message, gen, history=()):
    """The compiled reply has plain generate()'s greedy tokens, parting from them at a near-tie at most.

    On the CPU the replies are equal token for token (tests/test_chat.py). On the GPU in 16 bits the compiled
    step fuses operations and rounds once where eager rounds each one, and attends over the fixed-length cache
    with another kernel, so the logits differ in their last bits: where plain generate's best token leads the
    compiled path's choice by less than that, the two may part there. Anywhere else they must agree. The lead
    is measured with the model run eagerly on the prompt and plain generate's tokens before the parting.
    """
    import torch
    from test_chat import plain_generate

    text = chat.reply(list(history), message, gen)
    ids, plain = chat.last["ids"], plain_generate(chat, message, gen, history)
    k = next((i for i, (a, b) in enumerate(zip(ids, plain, strict=False)) if a != b), None)
    if k is None:
        assert len(ids) == len(plain), (ids, plain)
        return text
    prompt = chat.template.prompt(gen.system, list(history), message, chat.tokenizer)
    device = chat.model.device
    seq = torch.cat([chat.tokenizer(prompt, return_tensors="pt")["input_ids"].to(device),
                     torch.tensor([plain[:k]], dtype=torch.long, device=device)], dim=1)
    with torch.no_grad():
        logits = chat.model(seq).logits[0, -1].float()
    lead = (logits[plain[k]] - logits[ids[k]]).item()
    tolerance = 0.02 * logits.abs().max().item()
    print(f"parted at token {k} of {len(plain)}: lead {lead:.4f}, tolerance {tolerance:.4f}")
    assert abs(lead) <= tolerance, f"parted at token {k} where plain generate's token leads by {lead:.3f}"
    return text


# ---- chat speed: the replayed steps (16-bit) and the compiled loop (quantized), set up at load -------------
@pytest.fixture(scope="module")
def fast_chat(base_model):
    from core.chat import Chat

    chat = Chat()
    chat.load("default", precision="16bit")  # the warm-up happens here, not on the first message
    yield chat
    chat.close()


def assert_greedy_exactly_plain(chat, message, gen, history=()) -> str:
    """The reply has plain generate()'s greedy tokens, every one of them, on the whole prompt."""
    from test_chat import plain_generate

    text = chat.reply(list(history), message, gen)
    ids, plain = chat.last["ids"], plain_generate(chat, message, gen, history)
    parted = next((i for i, (a, b) in enumerate(zip(ids, plain, strict=False)) if a != b), None)
    assert parted is None and len(ids) == len(plain), f"{message!r}: parted at token {parted} of {len(plain)}"
    return text


def test_a_16bit_model_on_the_gpu_answers_with_exactly_the_greedy_tokens_of_plain_generate(fast_chat):
    """16-bit on the GPU: the replayed steps (core.decode.Replayed), set up at load, write plain generate()'s
    greedy tokens token for token, 200 of them, in English and Chinese. "Tell me about the sea." is where the
    compiled static cache parted from plain generate at token 15 (docs/BENCHMARKS.md)."""
    assert fast_chat.decoder == "replay" and fast_chat.replay_note == "", fast_chat.replay_note
    # Independent kernels side by side (core.overlap) passed the bit-for-bit check at load, and some did run so.
    assert fast_chat._loop.overlap is not None and fast_chat._loop.overlap.forks > 0
    assert fast_chat.compiled == 4096 and fast_chat.fallback == "" and fast_chat.warmup_s > 0
    gen = GenerationConfig(temperature=0, max_new_tokens=200, repetition_penalty=1.0)
    for message in ("Tell me about the sea.", "你好，请介绍一下你自己。", "Write a poem about autumn.",
                    "请用三句话解释什么是机器学习。"):
        assert_greedy_exactly_plain(fast_chat, message, gen)
    with_penalty = GenerationConfig(temperature=0, max_new_tokens=60, repetition_penalty=1.3)
    assert_greedy_exactly_plain(fast_chat, "给我讲一个关于猫的故事。", with_penalty)


def test_a_later_turn_answers_exactly_like_plain_generate_on_the_whole_prompt(fast_chat):
    """A conversation in 16 bits on the GPU: each turn reads its whole prompt (history included: 0 tokens held
    from the turn before, so the prompt pass is plain generate()'s too) and writes plain generate()'s tokens."""
    gen = GenerationConfig(temperature=0, max_new_tokens=120, repetition_penalty=1.0)
    history = []
    for message in ("Tell me about the sea.", "那海上的风呢？", "Which of the two do you like more, and why?"):
        reply = assert_greedy_exactly_plain(fast_chat, message, gen, history)
        assert fast_chat.last["reused_tokens"] == 0 and fast_chat.last["prompt_tokens"] > 30 * len(history)
        history.append((message, reply))


def test_a_reply_at_cache_lengths_not_met_before_is_as_fast_as_the_same_reply_again(fast_chat):
    """Attention runs on kernels that need nothing built per length: with cuDNN's, which torch picks for one query
    on an H200, each new length of the cache cost 55-67 ms and such a reply ran at a sixteenth of its speed when
    asked again (docs/BENCHMARKS.md)."""
    gen = GenerationConfig(temperature=0, max_new_tokens=150, repetition_penalty=1.0)
    message = "请详细介绍一下长城的历史，包括它的修建年代和主要作用。" * 40  # about 1,000 tokens: lengths no test met
    fast_chat.reply([], message, gen)
    first = fast_chat.last
    fast_chat.reply([], message, gen)
    again = fast_chat.last
    assert first["tokens"] > 20 and first["tokens_per_s"] > 0.6 * again["tokens_per_s"], (first, again)


def test_other_lengths_and_sampling_do_not_compile_again(fast_chat):
    from torch._dynamo.utils import counters

    assert fast_chat.compiled, fast_chat.fallback  # else nothing could recompile, and the test would prove nothing
    graphs = counters["stats"]["unique_graphs"]
    speeds = []
    cases = [
        ("Hi.", GenerationConfig(temperature=0, max_new_tokens=60, repetition_penalty=1.0)),
        ("Write a poem about the wind over the sea, the light and the ships. " * 8,
         GenerationConfig(temperature=0.9, top_p=0.8, max_new_tokens=77)),
        ("你好，请介绍一下你自己。", GenerationConfig(temperature=1.2, top_k=10, max_new_tokens=65)),
    ]
    for message, gen in cases:
        fast_chat.reply([("Hello", "Hello! How can I help?")], message, gen)
        speeds.append(fast_chat.last["tokens_per_s"])
    assert counters["stats"]["unique_graphs"] == graphs, "a reply compiled again"
    # Each of these replies as fast as the same reply again (a recompile or a new CUDA graph would cost seconds);
    # replies of other lengths differ in speed on a model this small, so each is set against itself.
    for (message, gen), first in zip(cases, speeds, strict=True):
        fast_chat.reply([("Hello", "Hello! How can I help?")], message, gen)
        assert first > 0.5 * fast_chat.last["tokens_per_s"], (message, first, fast_chat.last["tokens_per_s"])


def test_the_panel_is_not_slower_than_plain_generate(fast_chat):
    import time

    import torch

    gen = GenerationConfig(temperature=0, max_new_tokens=100, repetition_penalty=1.0)
    prompt = fast_chat.template.prompt("", [], "Tell me a long story.", fast_chat.tokenizer)
    inputs = fast_chat.tokenizer(prompt, return_tensors="pt").to("cuda")
    fast_chat.model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=fast_chat.tokenizer.pad_token_id)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fast_chat.model.generate(**inputs, max_new_tokens=100, do_sample=False, min_new_tokens=100,
                                   pad_token_id=fast_chat.tokenizer.pad_token_id)
    torch.cuda.synchronize()
    plain = (out.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - start)
    fast_chat.reply([], "Tell me a long story.", gen)
    assert fast_chat.last["tokens_per_s"] >= 0.9 * plain, (fast_chat.last, plain)


def test_int4_loads_compiles_and_answers(base_model):
    pytest.importorskip("torchao")
    from core.chat import Chat

    chat = Chat()
    try:
        chat.load("default", precision="int4")
        assert chat.fitted["precision"] == "int4" and chat.compiled and chat.fallback == "", chat.fallback
        assert chat.reply([], "Say hello.", GenerationConfig(temperature=0, max_new_tokens=12))
        assert chat.last["tokens_per_s"] > 0
    finally:
        chat.close()


def test_the_loop_decoder_compiles_once_and_answers_greedy_like_plain_generate(base_model):
    """core/decode.py on the GPU (16-bit, compiled at load): plain generate()'s greedy tokens, and later replies of
    other lengths and sampling settings compile nothing new, and a later turn of a conversation reads only its new
    tokens. It loads after another chat has closed in this process, on a thread of its own, as the panel's second
    model does."""
    from torch._dynamo.utils import counters

    from core.chat import Chat

    chat = Chat()
    try:
        chat.load("default", precision="16bit", decoder="loop")
        assert chat.decoder == "loop" and chat.compiled == 4096 and chat.fallback == "" and chat.warmup_s > 0, chat.fallback
        gen = GenerationConfig(temperature=0, max_new_tokens=40, repetition_penalty=1.0)
        for message in ("Tell me about the sea.", "你好，请介绍一下你自己。"):
            assert_greedy_like_plain(chat, message, gen)
        graphs = counters["stats"]["unique_graphs"]
        for message, other in [("Hi.", GenerationConfig(temperature=0, max_new_tokens=60)),
                               ("你好，请介绍一下你自己。" * 8, GenerationConfig(temperature=0.9, top_p=0.8, max_new_tokens=77))]:
            chat.reply([("Hello", "Hello! How can I help?")], message, other)
            assert chat.last["tokens"] > 0
        assert counters["stats"]["unique_graphs"] == graphs, "a reply compiled again"
        # A later turn passes only its new tokens through the model: the cache held the turns before it.
        chat.forget()
        history, kept = [], []
        for message in ("Tell me about the sea.", "那海上的风呢？", "Which of the two do you like more, and why?"):
            reply = assert_greedy_like_plain(chat, message, gen, history)
            kept.append((chat.last["reused_tokens"], chat.last["prompt_tokens"]))
            history.append((message, reply))
        (_, first), (second_kept, second), (third_kept, third) = kept
        assert first <= second_kept < second and second <= third_kept < third and third - third_kept <= 40, kept
    finally:
        chat.close()
