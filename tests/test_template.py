"""Templates: what the model sees in training is exactly what chat sends it later."""

from __future__ import annotations

import pytest

from core.errors import UserError
from core.template import SEED, Template

ROW = {"system": "", "turns": [{"instruction": "翻译成英文", "input": "你好", "output": "Hello"}]}
TWO = {"system": "Be brief.", "turns": [
    {"instruction": "Hi", "input": "", "output": "Hello!"},
    {"instruction": "2+2?", "input": "", "output": "4"},
]}


def test_seed_joins_instruction_and_input_and_ends_the_reply_with_eos(tokenizer):
    assert Template.parse("seed").render(ROW, tokenizer) == [
        ("### Human: 翻译成英文\n你好 ### Assistant: ", False),
        ("Hello" + tokenizer.eos_token, True),
    ]


def test_seed_multi_turn_trains_only_the_replies(tokenizer):
    segs = Template.parse("seed").render(TWO, tokenizer)
    assert [t for t, trained in segs if trained] == ["Hello!" + tokenizer.eos_token, "4" + tokenizer.eos_token]
    assert segs[0] == ("Be brief.\n", False)


@pytest.mark.parametrize("name", ["seed", "chat", "Q: {instruction}\n{input}\nA: {output}\n"])
def test_chat_prompt_is_the_training_text_up_to_the_reply(tokenizer, name):
    """The prompt chat builds for turn 2 is byte for byte what training put before reply 2."""
    t = Template.parse(name)
    segs = t.render(TWO, tokenizer)
    trained_before_last = "".join(text for text, _ in segs[:-1])
    prompt = t.prompt("Be brief.", [("Hi", "Hello!")], "2+2?", tokenizer)
    assert prompt == trained_before_last


def test_chat_template_splits_the_models_rendering_into_turns(tokenizer):
    segs = Template.parse("chat").render(TWO, tokenizer)
    whole = "".join(t for t, _ in segs)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    assert whole == tokenizer.apply_chat_template(msgs, tokenize=False)
    assert [t for t, trained in segs if trained] == ["Hello!<|im_end|>\n", "4<|im_end|>\n"]


def test_chat_template_needs_a_model_that_has_one():
    class Plain:
        chat_template = None
        eos_token = "</s>"

    with pytest.raises(UserError, match="no chat template"):
        Template.parse("chat").render(ROW, Plain())


def test_plain_text_is_trained_whole(tokenizer):
    assert Template.parse("seed").render({"text": "abc"}, tokenizer) == [("abc", True)]


@pytest.mark.parametrize("pattern, message", [
    ("Q: {question} A: {output}", "unknown field {question}"),
    ("Q: {instruction}", "needs {instruction} and {output}"),
    ("{output} then {instruction}", "must come after"),
    ("Q: {instruction} A: {output} {", "literal brace"),
    ("Q: {instruction} A: {output:>5}", "without :format"),
])
def test_bad_custom_patterns_are_user_errors(pattern, message):
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Template.parse(pattern)


def test_custom_pattern_with_literal_braces_renders_them():
    segs = Template.parse('JSON {{"q": "{instruction}"}} -> {output}').render(ROW)
    assert segs[0] == ('JSON {"q": "翻译成英文"} -> ', False)


def test_the_recorded_template_comes_back_the_same():
    for t in (Template.parse("seed"), Template.parse("chat"), Template.parse("Q {instruction} A {output}")):
        assert Template.from_dict(t.to_dict()) == t
    assert Template.parse("seed").pattern == SEED
    with pytest.raises(UserError):
        Template.from_dict({"name": "alpaca"})


def test_stop_strings_end_a_reply_at_the_next_turn(tokenizer):
    assert Template.parse("seed").stop_strings(tokenizer) == ["### Human:", tokenizer.eos_token]
    assert Template.parse("chat").stop_strings(tokenizer) == [tokenizer.eos_token]
