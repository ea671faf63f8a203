"""The one exception type for mistakes a user can make and fix, and its text in both languages.

A message's Chinese lives next to its English, where the message is made: `UserError(en, zh=...)`
or `Text(en, zh)` for a message that is returned rather than raised (validate()).
"""


class Text(str):
    """English text that carries its Chinese: still the plain English str wherever one is expected."""

    zh: str

    def __new__(cls, en: str, zh: str | None = None) -> "Text":
        self = super().__new__(cls, en)
        self.zh = zh if zh is not None else getattr(en, "zh", en)
        return self

    def __reduce__(self):  # pickles (child processes) with its Chinese
        return (Text, (str(self), self.zh))


class UserError(Exception):
    """A problem the user caused and can fix: bad file, bad setting, missing model.

    The message is shown as is, on one line, by the command line (exit code 2)
    and by the panel, so it names the file, line or field and what to do.
    `zh` is the same message in Chinese (taken from the message when it is a Text).
    """

    def __init__(self, message: str, *, zh: str | None = None, field: str | None = None,
                 hint: str | None = None, hint_zh: str | None = None):
        super().__init__(message)
        self.zh = zh if zh is not None else getattr(message, "zh", None)
        self.field = field
        self.hint = hint  # what to do next, when the message alone does not say it
        self.hint_zh = hint_zh if hint_zh is not None else getattr(hint, "zh", None)

    def __str__(self) -> str:  # keep it to one line for the CLI and the UI
        return _line(self.args[0])



def _line(s) -> str:
    return " ".join(str(s).split("\n"))


def text(message, lang: str | None) -> str:
    """A message (UserError, Text or str) in `lang` ("zh" or "en"), English where it has no Chinese."""
    if lang == "zh":
        zh = getattr(message, "zh", None)
        if zh:
            return _line(zh)
    return str(message) if isinstance(message, UserError) else _line(message)


def hint(e: BaseException, lang: str | None) -> str | None:
    """A UserError's hint in `lang`, English where it has no Chinese (None when it has no hint)."""
    en = getattr(e, "hint", None)
    if not en:
        return None
    zh = getattr(e, "hint_zh", None)
    return zh if lang == "zh" and zh else en


def of(e: BaseException) -> Text:
    """An exception's message as a Text (its Chinese when it is a UserError that has one)."""
    first = e.args[0] if len(e.args) == 1 else None
    zh = getattr(e, "zh", None) or getattr(first, "zh", None)
    return Text(str(e), zh or str(e))


# What Python's JSON reader says of a broken text, in Chinese (its message starts with one of these).
_JSON_ZH = (("Expecting value", "这里缺少一个值"), ("Expecting ',' delimiter", "这里缺少逗号 ','"),
            ("Expecting ':' delimiter", "这里缺少冒号 ':'"),
            ("Expecting property name enclosed in double quotes", "字段名要用英文双引号括起来"),
            ("Unterminated string", "字符串没有结束（缺少右引号）"),
            ("Invalid control character", "字符串里有未转义的控制字符（如换行）"),
            ("Invalid \\uXXXX escape", "无效的 \\u 转义"), ("Invalid \\escape", "无效的 \\ 转义"),
            ("Extra data", "一个 JSON 值之后还有多余的内容"), ("Illegal trailing comma", "结尾多了一个逗号"))


def json_zh(message: str) -> str:
    """json.JSONDecodeError's message (`msg`) in Chinese, with the English kept where there is no match."""
    for en, zh in _JSON_ZH:
        if message.startswith(en):
            return zh
    return message
