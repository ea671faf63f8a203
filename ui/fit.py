"""The fit badge: whether a job fits this machine's free memory, in words, next to the button that starts it.

core/fit.py makes the numbers; this module only says them, in the reader's language.
"""

from __future__ import annotations

from html import escape

from ui.i18n import say


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def changes_text(changes: dict, language: str) -> str:
    """Setting changes in words: "batch 2, accumulation 8" / "批大小 2，梯度累积 8"."""
    sep = "，" if language == "zh" else ", "
    return sep.join(say(f"fitfix_{k}", language, v=v) for k, v in changes.items())


def badge(found: dict, language: str, changes: dict | None = None, note: str = "") -> str:
    """One job's fit ({"verdict", "where", "need", "free", "total"} from core.fit) as the page shows it."""
    verdict = found["verdict"]
    if verdict == "unknown":  # a model not downloaded yet: nothing to say
        return ""
    text = say(f"fit_{verdict}", language, need=_gib(found["need"]), free=_gib(found["free"]),
               total=_gib(found["total"] or 0), where=say(f"fit_where_{found['where']}", language))
    if changes and verdict != "fits":
        text += " " + say("fit_would", language, changes=changes_text(changes, language))
    if note:
        text += " " + note
    return f"<div class='qs-fit qs-fit-{verdict}'>{escape(text)}</div>"
