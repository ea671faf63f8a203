"""Chat on CPU: replies stream, stop at the end of the turn, and use the template the model was trained with."""

from __future__ import annotations

import pytest
from test_merge import adapter_copy, one_line, own_code_model
from test_train import core_cli, shared_merge, shared_run

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
    assert len(pieces) > 3
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


def test_stop_strings_cut_the_reply():
    from core.chat import _cut

    assert _cut("I am Lumi. ### Human: and you?", ["### Human:", "<|im_end|>"]) == "I am Lumi."
    assert _cut("still writing", ["### Human:"]) is None


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
    result = core_cli("chat", "--model", tmp_path / "nothing", "--prompt", "hi")
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
    line = one_line(core_cli("chat", "--model", custom, "--prompt", "hi"))
    assert line == f"error: model: {custom} ships its own code; switch on 'Trust remote code' if you trust it"


@pytest.mark.parametrize("name, why", [
    ("adapter_model.safetensors", "(adapter_model.safetensors: Error while deserializing header"),
    ("tokenizer.json", "(its tokenizer: "),
])
def test_a_half_written_adapter_is_named_as_damaged(tiny_adapter, tmp_path, name, why):
    adapter = adapter_copy(tiny_adapter, tmp_path / "adapter")
    whole = (adapter / name).read_bytes()
    (adapter / name).write_bytes(whole[: len(whole) // 2])  # the disk filled up while the run saved it
    line = one_line(core_cli("chat", "--adapter", adapter, "--prompt", "hi"))
    assert line.startswith(f"error: adapter: {adapter} is damaged or incomplete {why}")
    assert line.endswith("; train again or pick another run")
