"""Chat on CPU: replies stream, stop at the end of the turn, and use the template the model was trained with."""

from __future__ import annotations

import pytest
from test_merge import adapter_copy, one_line, own_code_model
from test_train import core_cli, core_here, shared_merge, shared_run

from core.chat import decoder_for
from core.config import GenerationConfig
from core.errors import UserError

GREEDY = GenerationConfig(temperature=0, max_new_tokens=40)


@pytest.fixture(scope="module")
def merged_chat():
    from core.chat import Chat

    chat = Chat()
    chat.load(str(shared_merge()))
    yield chat
    chat.close()


@pytest.mark.slow
def test_reply_streams_as_a_growing_text(merged_chat):
    pieces = list(merged_chat.stream([], "Who are you?", GREEDY))
    # The page is redrawn at most UPDATES times a second: on a GPU this 12-token reply is written in a few of those.
    assert len(pieces) > (3 if merged_chat.model.device.type == "cpu" else 1), pieces
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:], strict=False))
    assert pieces[-1] == "I am Lumi, an assistant made by QLoRA Studio."


@pytest.mark.slow
def test_reply_ends_at_the_end_of_the_turn(merged_chat):
    """The reply holds no next turn and no end-of-turn token, even with a long budget."""
    history = [("Who are you?", "I am Lumi, an assistant made by QLoRA Studio.")]
    reply = merged_chat.reply(history, "What is your name?", GenerationConfig(temperature=0, max_new_tokens=200))
    assert reply and "###" not in reply and "<|im_end|>" not in reply and "<|im_start|>" not in reply
    assert merged_chat.template.name == "chat"  # read from the merged folder's qlora_studio.json (auto chose it)


@pytest.mark.slow
def test_sampling_settings_are_used(merged_chat):
    short = merged_chat.reply([], "Tell me a story about the sea.", GenerationConfig(temperature=1.0, max_new_tokens=3))
    assert 0 < len(merged_chat.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 4


def test_a_finished_reply_ends_before_the_next_turn_and_on_a_whole_character():
    from core.template import reply_text

    assert reply_text("I am Lumi. ### Human: and you? <|im_end|>", ["<|im_end|>", "### Human:"]) == "I am Lumi."
    assert reply_text("still writing ", ["### Human:"]) == "still writing"
    assert reply_text("长城始建于\ufffd", []) == "长城始建于"  # the first of a character's tokens, and no more


@pytest.mark.slow
def test_base_model_uses_its_own_chat_template(base_model):
    from core.chat import Chat

    chat = Chat()
    chat.load("default")
    try:
        assert chat.template.name == "chat"
        reply = chat.reply([], "Say hello.", GenerationConfig(temperature=0, max_new_tokens=20))
        assert reply and "<|im_start|>" not in reply
    finally:
        chat.close()
    assert chat.model is None


@pytest.mark.slow
def test_cli_answers_with_base_plus_adapter():
    result = core_cli("chat", "--adapter", shared_run() / "adapter", "--prompt", "你是谁？",
                      "--temperature", "0", "--max-new-tokens", "30")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("我是 Lumi") and "QLoRA Studio" in result.stdout


def test_cli_refuses_a_missing_model(tmp_path):
    result = core_here("chat", "--model", tmp_path / "nothing", "--prompt", "hi")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: model: folder {tmp_path / 'nothing'} not found"]


# ---- what a user may point chat at -----------------------------------------------------------
def test_refuses_an_adapter_whose_run_diverged(tiny_adapter, tmp_path):
    from core.chat import Chat

    nan = adapter_copy(tiny_adapter, tmp_path / "nan", float("nan"))
    with pytest.raises(UserError) as e:
        Chat().load(adapter=str(nan))
    assert str(e.value) == (f"adapter: {nan} holds NaN/inf values (the run diverged); train again with a lower "
                            "learning rate")


def test_a_model_with_its_own_code_needs_trust(tmp_path, base_model):
    custom = own_code_model(tmp_path / "custom", base_model)
    line = one_line(core_here("chat", "--model", custom, "--prompt", "hi"))
    assert line == f"error: model: {custom} ships its own code; switch on 'Trust remote code' if you trust it"


@pytest.mark.parametrize("name, why", [
    ("adapter_model.safetensors", "(adapter_model.safetensors: Error while deserializing header"),
    ("tokenizer.json", "(its tokenizer: "),
])
def test_a_half_written_adapter_is_named_as_damaged(tiny_adapter, tmp_path, name, why):
    adapter = adapter_copy(tiny_adapter, tmp_path / "adapter")
    whole = (adapter / name).read_bytes()
    (adapter / name).write_bytes(whole[: len(whole) // 2])  # the disk filled up while the run saved it
    line = one_line(core_here("chat", "--adapter", adapter, "--prompt", "hi"))
    assert line.startswith(f"error: adapter: {adapter} is damaged or incomplete {why}")
    assert line.endswith("; train again or pick another run")


@pytest.fixture(scope="module")
def rope_patched_by_a_fixture():
    """As a module's fixture that trains on a GPU with Liger's kernels leaves transformers' Llama code."""
    from transformers.models.llama import modeling_llama

    rope = modeling_llama.apply_rotary_pos_emb
    modeling_llama.apply_rotary_pos_emb = lambda *args: None  # what apply_liger_kernel_to_llama does
    yield rope


def test_modeling_code_patched_by_a_fixture_or_a_test_is_put_back(rope_patched_by_a_fixture):
    """conftest's guard: Liger's process-wide patches of transformers' modeling code, left by training in this
    process, made a later compiled chat 17x slower on the GPU; each test starts and ends with the originals."""
    from conftest import modeling_state, restore_modeling
    from transformers.models.llama import modeling_llama

    assert modeling_llama.apply_rotary_pos_emb is rope_patched_by_a_fixture  # put back before this test
    forward = modeling_llama.LlamaForCausalLM.forward
    state = modeling_state()
    modeling_llama.LlamaForCausalLM.forward = lambda self, *args: None
    restore_modeling(state)
    assert modeling_llama.LlamaForCausalLM.forward is forward


# ---- speed: the panel's streaming path -------------------------------------------------------
@pytest.fixture(scope="module")
def base_chat(base_model):
    from core.chat import Chat

    chat = Chat()
    chat.load("default")
    yield chat
    chat.close()


def plain_generate(chat, message, gen, history=()):
    """The reply's token ids from a plain greedy model.generate, no streamer, no stopping criteria."""
    prompt = chat.template.prompt(gen.system, list(history), message, chat.tokenizer)
    inputs = chat.tokenizer(prompt, return_tensors="pt").to(chat.model.device)
    out = chat.model.generate(**inputs, max_new_tokens=gen.max_new_tokens, do_sample=False, temperature=None,
                              top_p=None, top_k=None, repetition_penalty=gen.repetition_penalty,
                              pad_token_id=chat.tokenizer.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_greedy_reply_has_the_tokens_of_plain_generate(base_chat):
    gen = GenerationConfig(temperature=0, max_new_tokens=24)
    reply = base_chat.reply([], "Tell me about the sea.", gen)
    ids = base_chat.last["ids"]
    assert len(ids) == 24 and ids == plain_generate(base_chat, "Tell me about the sea.", gen)
    assert reply == base_chat.tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert base_chat.last["first_token_s"] > 0 and base_chat.last["tokens_per_s"] > 0


def test_streamed_text_is_never_lost_or_repeated(base_chat):
    """Each text extends the one before, so the pieces a page appends add up to the reply, once each."""
    pieces = list(base_chat.stream([], "请用中文介绍一下大海。", GenerationConfig(temperature=0, max_new_tokens=30)))
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:], strict=False))
    added = "".join(b[len(a):] for a, b in zip([""] + pieces, pieces, strict=False))
    assert added == pieces[-1] == base_chat.tokenizer.decode(base_chat.last["ids"], skip_special_tokens=True).strip()
    assert len(set(pieces)) == len(pieces) and not any("\ufffd" in p for p in pieces)


def test_a_reply_cut_short_by_its_length_ends_on_a_whole_character(base_chat):
    """A Chinese character is often two or three tokens. A reply whose last token is the first of them ends
    before that character: never on U+FFFD, neither while it streams nor at its end."""
    message = "请详细介绍一下长城的历史。"
    base_chat.reply([], message, GenerationConfig(temperature=0, max_new_tokens=16))
    ids = base_chat.last["ids"]

    def text(n):
        return base_chat.tokenizer.decode(ids[:n], skip_special_tokens=True)

    halves = [n for n in range(2, len(ids) + 1) if text(n).endswith("\ufffd")]
    assert halves, "the reply needs a length that ends inside a character"
    n = halves[-1]
    pieces = list(base_chat.stream([], message, GenerationConfig(temperature=0, max_new_tokens=n)))
    assert base_chat.last["ids"] == ids[:n]
    assert pieces[-1] == text(n).rstrip("\ufffd").strip() != "" and not any("\ufffd" in p for p in pieces)
    assert base_chat.reply([], message, GenerationConfig(temperature=0, max_new_tokens=n)) == pieces[-1]


def test_page_updates_at_most_fifteen_times_a_second():
    """Tokens arriving every 2 ms (500 a second) reach the reader in batches, about 15 a second."""
    import threading
    import time

    import torch

    from core.chat import Tokens

    tokens = Tokens()

    def write():
        tokens.put(torch.tensor([[1, 2, 3]]))  # the prompt, which generate() hands over first
        for i in range(300):
            tokens.put(torch.tensor([i]))
            time.sleep(0.002)
        tokens.end()

    threading.Thread(target=write).start()
    start, handed = time.perf_counter(), []
    while (ids := tokens.next(1 / 15)) is not None:
        handed.append(ids)
    seconds = time.perf_counter() - start
    assert handed[-1] == list(range(300))  # every token, in order, the prompt not among them
    assert 2 <= len(handed) <= seconds * 15 + 2, (len(handed), seconds)


def test_text_that_may_still_change_is_held_back():
    from core.chat import _settled

    assert _settled("I am Lumi. ##", ["### Human:"]) == "I am Lumi. "
    assert _settled("I am Lumi. #", ["### Human:", "<|im_end|>"]) == "I am Lumi. "
    assert _settled("大海\ufffd", []) == "大海"  # half of a character's bytes
    assert _settled("a # b", ["### Human:"]) == "a # b"


def test_stop_ends_the_reply_at_once(base_chat):
    import time

    stream = base_chat.stream([], "Write a very long story about a ship.", GenerationConfig(temperature=0,
                                                                                          max_new_tokens=2000))
    seen = [next(stream), next(stream)]
    start = time.perf_counter()
    stream.close()  # what Stop does to the reply
    took = time.perf_counter() - start  # close returns once generation has ended
    made = base_chat.last["tokens"]
    # Within about a second: the token being computed is finished, no more (a loaded machine computes slowly).
    assert took < 1.0 + 2 / base_chat.last["tokens_per_s"], (took, base_chat.last["tokens_per_s"])
    assert 2 <= made < 100 and seen[-1] in base_chat.tokenizer.decode(base_chat.last["ids"], skip_special_tokens=True)
    # The model is free at once for the next message.
    assert base_chat.reply([], "Hi.", GenerationConfig(temperature=0, max_new_tokens=3))


def test_closing_the_model_ends_the_reply_being_written_at_once(base_model):
    """Unload while a long reply is written: close() used to wait up to a minute for the reply to end on its own,
    then emptied the weights under it."""
    import time

    from core.chat import Chat

    chat = Chat()
    chat.load(base_model)
    stream = chat.stream([], "Write a very long story about a ship.", GenerationConfig(temperature=0, max_new_tokens=2000))
    seen = [next(stream), next(stream)]
    start = time.perf_counter()
    chat.close()
    took = time.perf_counter() - start
    rest = list(stream)  # the reply ends, whole so far, without an error
    assert chat.model is None and took < 1.0 + 2 / chat.last["tokens_per_s"], (took, chat.last)
    assert 2 <= chat.last["tokens"] < 100 and (rest[-1] if rest else seen[-1]).startswith(seen[0])


def test_static_cache_gives_the_same_tokens_and_a_failed_warm_up_falls_back(base_chat, monkeypatch):
    """The GPU's fast path (fixed-length cache, here without a compiler) answers alike; if it cannot be set up,
    chat says so in one line and answers the plain way."""
    from core import chat as chat_module

    gen = GenerationConfig(temperature=0, max_new_tokens=16)
    plain = base_chat.reply([], "Name three colours.", gen)
    base_chat.decoder = "generate"  # the decoder of a model spread over several GPUs (chat.decoder_for)
    try:
        assert base_chat.warm_up() > 0 and base_chat.compiled == 4096 and base_chat.fallback == ""
        assert base_chat.reply([], "Name three colours.", gen) == plain
        monkeypatch.setattr(chat_module, "compiled_options", lambda tokens: {"cache_implementation": "no-such-cache"})
        base_chat.warm_up()
        assert base_chat.compiled == 0 and base_chat.fallback.startswith("ValueError: ")
        assert "\n" not in base_chat.fallback
        assert base_chat.reply([], "Name three colours.", gen) == plain
    finally:
        base_chat.compiled, base_chat.fallback, base_chat.decoder = 0, "", decoder_for(base_chat.model)


def compiled_loop_rounds_otherwise(chat) -> None:
    """Skip on a GPU: there the loop's step is compiled, and its fused kernels round differently from plain
    generate()'s, so its greedy tokens part from them at near-ties (measured at token 15 of "Tell me about the sea.",
    docs/BENCHMARKS.md). On the GPU a 16-bit model replays its own kernels instead, and tests/test_gpu.py holds those
    to plain generate()'s tokens; the compiled loop's own GPU test checks what it can promise."""
    if chat.model.device.type == "cuda":
        pytest.skip("the compiled loop's fused kernels round otherwise than plain generate(): exact on the CPU only")


def test_the_loop_decoder_writes_the_tokens_of_plain_generate(base_chat):
    """core.decode, the GPU's path with steps queued ahead of the host (here uncompiled, on the CPU): greedy replies
    have plain generate()'s tokens with and without a repetition penalty, a reply that ends inside a batch of steps
    ends there, and sampling stays within its settings."""
    import torch

    assert base_chat.decoder == decoder_for(base_chat.model)  # chosen at load: "loop" on the CPU
    compiled_loop_rounds_otherwise(base_chat)
    base_chat.decoder = "loop"
    try:
        assert base_chat.warm_up() > 0 and base_chat.compiled == 4096 and base_chat.fallback == ""
        for message, gen in [("Tell me about the sea.", GenerationConfig(temperature=0, max_new_tokens=24,
                                                                          repetition_penalty=1.0)),
                             ("Tell me about the sea.", GenerationConfig(temperature=0, max_new_tokens=21)),
                             ("Say hi.", GenerationConfig(temperature=0, max_new_tokens=60))]:
            text = base_chat.reply([], message, gen)
            ids = base_chat.last["ids"]
            assert ids == plain_generate(base_chat, message, gen), message
            assert text == base_chat.tokenizer.decode(ids, skip_special_tokens=True).strip()
        assert len(ids) < 60 and ids[-1] == base_chat.tokenizer.eos_token_id  # ended by the end of the turn
        torch.manual_seed(0)
        sampled = base_chat.reply([], "Hi.", GenerationConfig(temperature=0.8, top_p=0.9, top_k=20, max_new_tokens=12))
        assert sampled and 0 < base_chat.last["tokens"] <= 12
    finally:
        base_chat.compiled, base_chat.decoder = 0, decoder_for(base_chat.model)


def test_a_later_turn_reads_only_its_new_message_and_answers_as_a_fresh_prompt_would(base_chat):
    """The loop decoder keeps what its cache holds of the last prompt and reply: the third turn of a conversation
    passes only the tokens after them through the model, and still writes plain generate()'s tokens for the
    whole prompt. forget() makes the next reply read everything again."""
    gen = GenerationConfig(temperature=0, max_new_tokens=24, repetition_penalty=1.0)

    def plain(history, message):
        prompt = base_chat.template.prompt(gen.system, history, message, base_chat.tokenizer)
        inputs = base_chat.tokenizer(prompt, return_tensors="pt").to(base_chat.model.device)
        out = base_chat.model.generate(**inputs, max_new_tokens=gen.max_new_tokens, do_sample=False, temperature=None,
                                       top_p=None, top_k=None, pad_token_id=base_chat.tokenizer.pad_token_id)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    compiled_loop_rounds_otherwise(base_chat)
    base_chat.decoder = "loop"
    try:
        assert base_chat.warm_up() > 0 and base_chat.fallback == ""
        history, kept = [], []
        for message in ("Tell me about the sea.", "And about the wind over it?", "Which of the two do you like more?"):
            reply = base_chat.reply(history, message, gen)
            assert base_chat.last["ids"] == plain(history, message), message
            kept.append((base_chat.last["reused_tokens"], base_chat.last["prompt_tokens"]))
            history.append((message, reply))
        (_, first), (second_kept, second), (third_kept, third) = kept
        # Each later turn held the whole prompt before it and the reply, and read little more than its new message.
        assert first <= second_kept < second and second <= third_kept < third and third - third_kept <= 30, kept
        assert third > first + 30  # the history is most of the third prompt
        base_chat.forget()
        base_chat.reply(history[:2], "Which of the two do you like more?", gen)
        assert base_chat.last["reused_tokens"] == 0 and base_chat.last["ids"] == plain(history[:2], history[2][0])
    finally:
        base_chat.compiled, base_chat.decoder = 0, decoder_for(base_chat.model)


def test_a_sliding_window_cache_reads_the_whole_prompt_again():
    """A model whose attention slides over a window (Mistral style) keeps nothing between turns: its window has
    rolled over what it dropped. The replies stay plain generate()'s."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from core.chat import Tokens
    from core.decode import Decoder

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=8)).eval()
    decoder = Decoder(model, 128, compile=False)
    prompt = torch.randint(0, 256, (1, 20))
    for _ in range(2):  # the second time the whole prompt is what the cache held
        out = Tokens()
        decoder.reply(prompt, max_new_tokens=12, do_sample=False, eos_token_id=[], streamer=out, stop=lambda: False)
        assert decoder.kept == 0
        plain = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 20:].tolist()
        assert out.ids == plain


def test_each_model_gets_its_decoder_spread_16bit_on_a_gpu_quantized_or_on_the_cpu():
    """A model spread over several GPUs keeps generate(); a 16-bit model on one GPU gets the replayed steps (plain
    generate()'s kernels, so its greedy tokens); a quantized one or one on the CPU gets the loop."""
    from types import SimpleNamespace

    gpu, cpu = SimpleNamespace(type="cuda"), SimpleNamespace(type="cpu")
    assert decoder_for(SimpleNamespace()) == "loop"  # no device map: one device
    assert decoder_for(SimpleNamespace(hf_device_map={"": 0}, device=cpu)) == "loop"
    assert decoder_for(SimpleNamespace(hf_device_map={"model.embed_tokens": 0, "lm_head": "cpu"})) == "loop"
    assert decoder_for(SimpleNamespace(hf_device_map={"model.layers.0": 0, "model.layers.1": 1})) == "generate"
    assert decoder_for(SimpleNamespace(hf_device_map={"": 0}, device=gpu)) == "replay"
    assert decoder_for(SimpleNamespace(device=gpu, hf_quantizer=object())) == "loop"
    adapter_on_4bit = SimpleNamespace(device=gpu, get_base_model=lambda: SimpleNamespace(hf_quantizer=object()))
    assert decoder_for(adapter_on_4bit) == "loop"


def test_the_loop_decoder_traces_its_step_once_for_every_prompt_and_reply_length():
    """What the GPU compiles (core.decode's step) is traced by dynamo once: prompts, replies and sampling of other
    lengths and settings reuse it. Dynamo's eager backend stands in for inductor and CUDA graphs, which need a
    GPU and a compiler; the guards that decide a new compile are the same."""
    import torch
    from torch._dynamo.utils import counters
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.chat import Tokens
    from core.decode import Decoder

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    decoder = Decoder(model, 128, compile=False)
    torch._dynamo.reset()
    decoder.step = torch.compile(decoder._step, backend="eager", dynamic=False, fullgraph=True)
    counters.clear()
    for prompt, new, sample in [(5, 20, False), (9, 33, False), (31, 7, True), (2, 50, False)]:
        out = Tokens()
        decoder.reply(torch.randint(0, 256, (1, prompt)), max_new_tokens=new, do_sample=sample, eos_token_id=[],
                      streamer=out, stop=lambda: False, temperature=0.7, top_p=0.9)
        assert len(out.ids) == new  # the streamer keeps the reply, not the prompt handed to it first
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["recompiles"]) or dict(counters["stats"])
    torch._dynamo.reset()


def test_the_loop_decoder_stops_after_the_batch_that_holds_a_stop_string(base_chat):
    """A model that writes on into the next turn: the reply is cut at "### Human:" and writing ends with that batch."""
    import torch

    from core import decode
    from core.chat import Chat
    from core.template import Template

    written = base_chat.tokenizer("I am Lumi. ### Human: and who are you? ### Assistant: " * 5,
                                  add_special_tokens=False)["input_ids"]

    class Writer:  # stands in for the model: its logits always pick the next of the tokens above
        device = torch.device("cpu")
        config = base_chat.model.config
        generation_config = base_chat.model.generation_config
        calls = 0

        def forward(self, input_ids, **kw):
            logits = torch.zeros(1, 1, base_chat.model.config.vocab_size)
            logits[0, 0, written[Writer.calls]] = 1.0
            Writer.calls += 1
            return type("Out", (), {"logits": logits})()

        __call__ = forward

    chat = Chat()
    chat.model, chat.tokenizer, chat.template = Writer(), base_chat.tokenizer, Template()
    chat.decoder = "loop"
    chat.warm_up()
    assert chat.fallback == "" and chat.compiled
    Writer.calls = 0  # the warm-up's replies took some
    assert chat.reply([], "Who are you?", GenerationConfig(temperature=0, max_new_tokens=200)) == "I am Lumi."
    cut = len(base_chat.tokenizer("I am Lumi. ### Human:", add_special_tokens=False)["input_ids"])
    assert cut <= Writer.calls <= cut + decode.AHEAD + 1  # the batch with the stop string was the last one


def test_a_warning_while_warming_up_is_logged_and_keeps_the_fast_path(base_chat, monkeypatch, caplog):
    """The compiler's remarks (on the GPU: TF32, an empty CUDA graph) must not cost the fast path, even where
    warnings are errors, as in this test run (pytest.ini)."""
    import logging
    import warnings

    from core import chat as chat_module

    real = chat_module.compiled_options

    def remarking(tokens):
        warnings.warn("a remark from the compiler", UserWarning, stacklevel=2)
        return {k: v for k, v in real(tokens).items() if k != "compile_config"}

    monkeypatch.setattr(chat_module, "compiled_options", remarking)
    base_chat.decoder = "generate"
    try:
        with caplog.at_level(logging.INFO, logger="core.chat"):
            assert base_chat.warm_up() > 0
        assert base_chat.compiled == 4096 and base_chat.fallback == "", base_chat.fallback
        assert "while compiling: UserWarning: a remark from the compiler" in caplog.text
    finally:
        base_chat.compiled, base_chat.fallback, base_chat.decoder = 0, "", decoder_for(base_chat.model)


def test_generation_stops_right_after_a_stop_string(base_chat):
    """A model that writes on into the next turn: the reply and the generation end at "### Human:"."""
    import types

    import torch

    from core.chat import Chat
    from core.template import Template

    written = base_chat.tokenizer("I am Lumi. ### Human: and who are you? ### Assistant: " * 5,
                                  add_special_tokens=False)["input_ids"]
    made = []

    class Writer:  # stands in for the model: writes the tokens above, one a step, until told to stop
        device = torch.device("cpu")
        generation_config = types.SimpleNamespace(eos_token_id=None)

        def generate(self, streamer, input_ids, stopping_criteria, **kw):
            streamer.put(input_ids)
            for i in written:
                made.append(i)
                streamer.put(torch.tensor([i]))
                if stopping_criteria(input_ids, None).all():
                    break
            streamer.end()

    chat = Chat()
    chat.model, chat.tokenizer, chat.template = Writer(), base_chat.tokenizer, Template()
    assert chat.reply([], "Who are you?", GenerationConfig(temperature=0)) == "I am Lumi."
    assert base_chat.tokenizer.decode(made).endswith("### Human:")


def test_close_gives_the_weights_back_even_while_something_still_holds_the_model(base_model):
    """A reference that outlives the model (here the test's own) no longer keeps its memory: close empties it."""
    from core.chat import Chat

    chat = Chat()
    chat.load(base_model)
    assert chat.reply([], "Hi", GenerationConfig(temperature=0, max_new_tokens=3)) is not None
    held = chat.model  # what a late reference cycle, a hook or a compiled graph would hold
    before = sum(t.numel() for t in [*held.parameters(), *held.buffers()])
    chat.close()
    after = sum(t.numel() for t in [*held.parameters(), *held.buffers()])
    assert chat.model is None and before > 100_000_000 and after == 0, (before, after)
