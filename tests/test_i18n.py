"""Every piece of panel text in both languages, and each tab's help taken from its own settings class."""

from __future__ import annotations

import re
import string

import pytest

from ui.i18n import SAY, TABLES

NAMES = {"label_lora_alpha", "label_lora_dropout", "label_top_p", "label_top_k", "list_sep"}


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("tables", [TABLES, SAY], ids=["static", "server"])
def test_every_key_exists_in_chinese_and_english_with_the_same_blanks(tables):
    assert set(tables["en"]) == set(tables["zh"])
    for key, english in tables["en"].items():
        assert _placeholders(english) == _placeholders(tables["zh"][key]), key
        # Chinese text says something in Chinese, apart from a few names that stay as they are.
        assert re.search("[\u4e00-\u9fff]", tables["zh"][key]) or key in NAMES, key


def test_each_tab_shows_the_help_of_its_own_settings():
    from ui import layout

    demo = layout.build()
    help_keys: dict[str, set[str]] = {}
    for block in demo.blocks.values():
        info = getattr(block, "info", None)
        key = getattr(info, "key", None)
        if key and key.startswith("help_"):
            cls, name = key.removeprefix("help_").split("_", 1)
            help_keys.setdefault(name, set()).add(cls)
            assert key in TABLES["en"] and key in TABLES["zh"], key
    # The Data tab counts tokens with a model and shows length statistics; the Train tab trains it:
    # each shows its own words for these two.
    assert help_keys["model"] == {"PrepareConfig", "TrainConfig"}
    assert help_keys["max_seq_length"] == {"PrepareConfig", "TrainConfig"}
    assert "GenerationConfig" in help_keys["temperature"] and "MergeConfig" in help_keys["dtype"]
    assert TABLES["zh"]["help_PrepareConfig_model"] != TABLES["zh"]["help_TrainConfig_model"]


def test_no_widget_holds_a_text_key_as_its_value_or_choice():
    """The page translates every value it is first given that is also a text key, and translates it again at each
    language switch: a download box holding "model" (the key of the Train tab's label) showed "Model", kept those
    words as its value, and lost the reader's choice at the second switch. So no value or choice is a key."""
    from ui import layout

    keys = set(TABLES["en"])
    clashes = []
    for block in layout.build().blocks.values():
        value = getattr(block, "value", None)
        choices = [c[1] if isinstance(c, tuple) else c for c in getattr(block, "choices", None) or []]
        for item in (value if isinstance(value, list) else [value]) + choices:
            if isinstance(item, str) and item in keys:
                clashes.append((type(block).__name__, item))
    assert clashes == []


def test_the_header_switch_beats_the_browser_language():
    """Server-made text follows the switch's cookie; without one, the browser's first language."""
    import gradio as gr

    from ui.i18n import COOKIE, lang, say

    def request(cookie="", accept=""):
        return gr.Request(headers={"cookie": cookie, "accept-language": accept})

    assert lang(request(accept="zh-CN,zh;q=0.9,en;q=0.8")) == "zh"
    assert lang(request(accept="en-US,zh;q=0.5")) == "en"
    assert lang(request(f"other=1; {COOKIE}=zh", "en-US")) == "zh"
    assert lang(request(f"{COOKIE}=en", "zh-CN")) == "en"
    assert lang(request(f"{COOKIE}=fr", "zh-CN")) == "zh"  # an unknown choice: the browser decides
    assert lang(None) == "en"
    assert say("state_finished", lang(request(f"{COOKIE}=zh"))) == "已完成"


@pytest.mark.parametrize("language", ["en", "zh"])
def test_no_settings_help_starts_by_repeating_its_label(language):
    """A widget's help shows under its label: "Random seed" over "Random seed: the same seed …" says it twice."""
    table = TABLES[language]
    repeated = []
    for key, text in table.items():
        if key.startswith("help_"):
            name = key.split("_", 2)[2]
            words = table.get(f"label_{name}", "")
            if words and re.match(re.escape(words) + r"\s*[:：]", text, flags=re.IGNORECASE):
                repeated.append(key)
    assert repeated == [], repeated
