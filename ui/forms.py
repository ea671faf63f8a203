"""Widgets made from the settings classes, and how a problem is shown next to a form.

Every tab builds its setting widgets here, so a widget's label, help, default and choices come
from the one dataclass field that the engine validates; the tabs only say where it goes.
"""

from __future__ import annotations

import html
import re
from dataclasses import MISSING, fields

import gradio as gr

from core import errors
from ui.i18n import LABEL_EN, LABEL_ZH, help, label

WARN = "⚠️ "


def field(cls, name: str):
    """The dataclass field `name` of settings class `cls` (KeyError if there is none)."""
    for f in fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def default(cls, name: str):
    f = field(cls, name)
    return f.default if f.default is not MISSING else f.default_factory()


def widget(cls, name: str, value=MISSING, *, options: list | None = None, **kw):
    """The widget for setting `name` of `cls`: its label, help, default, choices and bounds from the class.

    A number with bounds is a slider over them; `options` offers suggestions for a free text
    setting; other keywords go to the component.
    """
    f = field(cls, name)
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    kw = dict(label=label(name), info=help(cls, name), value=default(cls, name) if value is MISSING else value, **kw)
    if kind.startswith("bool"):
        return gr.Checkbox(**kw)
    if f.metadata.get("choices"):  # a choice with words of its own (label_NAME_CHOICE) shows them
        return gr.Dropdown([(label(key), c) if (key := f"{name}_{c}") in LABEL_EN else c
                            for c in f.metadata["choices"]], **kw)
    if options is not None:
        return gr.Dropdown(options, allow_custom_value=True, **kw)
    if "bounds" in f.metadata:
        low, high = f.metadata["bounds"]
        return gr.Slider(low, high, step=f.metadata.get("step", 1), **kw)
    # No bounds of gradio's own on a number: its check is a popup in English only; the settings' validate() says
    # what is wrong next to the form, in the reader's language.
    if kind.startswith("int"):
        return gr.Number(precision=0, **kw)
    if kind.startswith("float"):
        return gr.Number(**kw)
    return gr.Textbox(**kw)


# What the engine names at the start of a message (a setting as the command line calls it) that is not a setting
# with a label of its own: the page says these in words too.
NAMES = {
    "en": {"data": "Dataset", "model": "Model", "adapter": "Adapter", "out": "Output", "base": "Base model",
           "resume": "Resume", "name": "Name", "dataset name": "Dataset name", "input": "Data file",
           "preset": "Preset"},
    "zh": {"data": "数据集", "model": "模型", "adapter": "适配器", "out": "输出位置", "base": "基础模型",
           "resume": "继续训练", "name": "名称", "dataset name": "数据集名称", "input": "数据文件",
           "preset": "预设"},
}
_NAMED = re.compile(r"([a-z][a-z_ ]*?)(: |：)")


def setting_words(name: str, language: str) -> str | None:
    """A setting as the command line calls it ("batch_size") in words ("批大小"), in `language`; None if it has none."""
    words = "zh" if language == "zh" else "en"
    return NAMES[words].get(name) or (LABEL_ZH if words == "zh" else LABEL_EN).get(name)


def _in_words(text: str, language: str) -> str:
    """A message that starts with a setting's name ("batch_size：至少为 1") starts with its label instead."""
    m = _NAMED.match(text)
    if not m:
        return text
    words = setting_words(m.group(1), language)
    return f"{words}{m.group(2)}{text[m.end():]}" if words else text


def warn(*problems, language: str | None = None) -> str:
    """Problems (UserErrors or text) as the page shows them: one line each, marked, HTML-escaped, a setting named
    by its label. In `language` ("zh" or "en", from i18n.lang) where the message carries it (core.errors), else
    English."""
    words = "zh" if language == "zh" else "en"
    return "  \n".join(WARN + html.escape(_in_words(errors.text(p, language), words)) for p in problems)
