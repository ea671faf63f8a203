"""Prompt templates: how a conversation becomes the exact text a model sees.

One template object is chosen when data is prepared, written into the dataset's
manifest, copied into the run's config and the adapter folder, and used again by
chat, so that training, merge and chat always agree.

A conversation is a plain dict (the "normalized row" the data readers produce):

    {"system": "", "turns": [{"instruction": "...", "input": "...", "output": "..."}, ...]}

or, for plain text data, {"text": "..."} (the whole text is trained).

Rendering gives *segments*: (text, trained) pairs. Joined, they are the training
text; `trained` marks the parts the loss is computed on (the assistant replies).
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass

from core.errors import UserError

SEED = "### Human: {instruction} ### Assistant: {output}"
"""The tutorial's template; the instruction and its input are joined by a newline."""

NAMES = ("seed", "chat", "custom")
WHY = {
    "chosen": "chosen",
    "auto_chat": "auto: the model has a chat template of its own, which it already knows",
    "auto_seed": "auto: the model has no chat template of its own, so the tutorial's",
}
"""Why a dataset has its template, in words (the panel says the same in both languages)."""

Segments = list[tuple[str, bool]]


@dataclass(frozen=True)
class Template:
    """A named template: "seed" (the tutorial's), "chat" (the model's own), or "custom" (pattern)."""

    name: str = "seed"
    pattern: str = SEED

    # ---- construction -------------------------------------------------------------
    @classmethod
    def parse(cls, value: str) -> Template:
        """From a command-line or UI value: "seed", "chat", or a custom pattern."""
        value = (value or "seed").strip()
        if value == "seed":
            return cls("seed", SEED)
        if value == "chat":
            return cls("chat", "")
        return cls.custom(value)

    @classmethod
    def choose(cls, value: str, tokenizer) -> tuple[Template, str]:
        """(template, why: a key of WHY) for a data preparation: "auto" takes the model's own chat template if any.

        An instruct model already knows its chat template; a template new to it (the tutorial's
        "### Human:") takes many updates to learn, and a short run then answers worse than before.
        """
        if (value or "auto").strip() != "auto":
            return cls.parse(value), "chosen"
        if getattr(tokenizer, "chat_template", None):
            return cls("chat", ""), "auto_chat"
        return cls("seed", SEED), "auto_seed"

    @classmethod
    def custom(cls, pattern: str) -> Template:
        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(pattern) if f is not None]
        except ValueError as e:  # a lone brace would otherwise surface as a traceback
            raise UserError(f"template: {e}; write a literal brace as {{{{ or }}}}", field="template",
                            zh=f"template：{e}；花括号本身请写成 {{{{ 或 }}}}") from None
        if any(spec or conv for _, spec, conv in parsed):
            raise UserError("template: write fields plainly, like {output}, without :format or !conversion",
                            field="template", zh="template：字段请直接写，如 {output}，不要加 :格式 或 !转换")
        fields = {f for f, _, _ in parsed}
        unknown = fields - {"instruction", "input", "output"}
        if unknown:
            raise UserError(
                f"template: unknown field {{{sorted(unknown)[0]}}}; use {{instruction}}, {{input}} and {{output}}",
                field="template",
                zh=f"template：未知字段 {{{sorted(unknown)[0]}}}；请使用 {{instruction}}、{{input}} 和 {{output}}",
            )
        if "output" not in fields or "instruction" not in fields:
            raise UserError(
                "template: a custom template needs {instruction} and {output}, e.g. "
                "'Q: {instruction}\\n{input}\\nA: {output}'",
                zh="template：自定义模板需要 {instruction} 和 {output}，例如 'Q: {instruction}\\n{input}\\nA: {output}'",
                field="template",
            )
        if pattern.index("{output}") < pattern.index("{instruction}"):
            raise UserError("template: {output} must come after {instruction}", field="template",
                            zh="template：{output} 必须在 {instruction} 之后")
        return cls("custom", pattern)

    @classmethod
    def from_dict(cls, d: dict | None) -> Template:
        if not d:
            return cls()
        if d.get("name") not in NAMES:
            raise UserError(f"template: unknown template name {d.get('name')!r}; use one of {', '.join(NAMES)}",
                            zh=f"template：未知的模板名 {d.get('name')!r}；请用其中之一：{', '.join(NAMES)}")
        return cls(d["name"], d.get("pattern", ""))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return self.pattern if self.name == "custom" else self.name

    # ---- rendering ----------------------------------------------------------------
    def render(self, row: dict, tokenizer=None) -> Segments:
        """Segments of one normalized row; the assistant replies are the trained parts."""
        if "text" in row:
            return [(row["text"], True)]
        if self.name == "chat":
            return _chat_segments(_messages(row), _need(tokenizer))
        eos = _eos(tokenizer)
        out: Segments = []
        if row.get("system"):
            out.append((row["system"].strip() + "\n", False))
        for turn in row["turns"]:
            prompt, tail = self._split(turn)
            out.append((prompt, False))
            out.append((turn["output"] + tail + eos, True))
        return out

    def prompt(self, system: str, history: list[tuple[str, str]], message: str, tokenizer=None) -> str:
        """The text a model continues to answer `message` after `history` (user, assistant) pairs."""
        turns = [{"instruction": u, "input": "", "output": a} for u, a in history]
        if self.name == "chat":
            msgs = _messages({"system": system, "turns": turns})
            msgs.append({"role": "user", "content": message})
            return _need(tokenizer).apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        text = "".join(t for t, _ in self.render({"system": system, "turns": turns}, tokenizer))
        return text + self._split({"instruction": message, "input": "", "output": ""})[0]

    def stop_strings(self, tokenizer=None) -> list[str]:
        """Strings that end a reply when the model starts the next turn by itself."""
        stops = []
        if self.name != "chat":
            head = self.pattern.split("{instruction}")[0].strip()
            if head:
                stops.append(head)
        eos = _eos(tokenizer)
        if eos:
            stops.append(eos)
        return stops

    def _split(self, turn: dict) -> tuple[str, str]:
        """(prompt text up to the reply, text after the reply) for one turn."""
        instruction, inp = turn.get("instruction", ""), turn.get("input", "") or ""
        head, tail = self.pattern.split("{output}", 1)
        if self.name == "seed":
            # The tutorial's habit of dropping `input` loses half of many Belle rows: join it instead.
            instruction = f"{instruction}\n{inp}" if inp else instruction
            inp = ""
        values = {"instruction": instruction, "input": inp}
        return head.format(**values), tail.format(**values, output="")


def reply_text(text: str, stops: list[str]) -> str:
    """A finished reply as the reader gets it, from the model's decoded continuation.

    The text before the first stop string (the model starting the next turn by itself), without a character
    cut in half where the reply ran out of tokens: a Chinese character is often two or three tokens, and a
    reply that stops after the first of them decodes it as U+FFFD.
    """
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text.rstrip().rstrip("\ufffd").strip()


def _need(tokenizer):
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError("template: this model has no chat template of its own; choose the seed or a custom template",
                        zh="template：这个模型没有自带对话模板，请选择 seed 或自定义模板")
    return tokenizer


def _eos(tokenizer) -> str:
    return (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""


def _messages(row: dict) -> list[dict]:
    msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for turn in row["turns"]:
        user = turn["instruction"] + (f"\n{turn['input']}" if turn.get("input") else "")
        msgs.append({"role": "user", "content": user})
        if turn.get("output") is not None:
            msgs.append({"role": "assistant", "content": turn["output"]})
    return msgs


def _chat_segments(msgs: list[dict], tokenizer) -> Segments:
    """Split the model's own chat rendering into prompt parts and assistant replies.

    Rendering the conversation cut before each reply (with the generation prompt) and
    cut after it gives the boundaries, whatever markers the template uses.
    """
    out: Segments = []
    done = ""
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        after = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not before.startswith(done) or not after.startswith(before):
            raise UserError("template: this model's chat template cannot be split into turns; use the seed template",
                            zh="template：这个模型的对话模板无法按轮次拆分，请使用 seed 模板")
        out.append((before[len(done):], False))
        out.append((after[len(before):], True))
        done = after
    return [s for s in out if s[0]]
