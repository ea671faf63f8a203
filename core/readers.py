"""Reading instruction files, one row at a time, into normalized conversations.

Containers: JSON lines (the Belle file, despite its `.json` name), a JSON array, CSV.
Layouts (what a row holds):

    alpaca    {"instruction", "input", "output"}           one turn; `input`, `system` and
                                                           `history` ([[q, a], ...]) are optional
    sharegpt  {"conversations": [{"from", "value"}, ...]}  multi-turn, from = human/user/gpt/assistant/system
    messages  {"messages": [{"role", "content"}, ...]}     OpenAI chat, system message included
    text      {"text": "..."}                              plain text, all of it trained

Every row becomes the dict core.template renders: {"system", "turns": [...]} or {"text"}.
Files are streamed (bytes hashed on the way) so that a 300 MB file never sits in memory.
A broken row raises BadRow (a UserError naming the file and line); a row that is fine but
useless (an empty reply) raises Dropped, which the caller counts instead of failing.
`bound()` cuts a row far longer than training could use, so that one huge row stays cheap.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from core.errors import Text, UserError, json_zh

USER_ROLES = {"human": "user", "user": "user"}
ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant"}
CHUNK = 1 << 20
# No tokenizer spends 32 characters on one token (English takes about 4, Chinese 1 to 2), so text past
# max_seq_length x 32 characters can never reach training, which keeps the beginning of a row. It is
# cut before tokenizing: one 50 MB row would otherwise cost a minute and gigabytes of memory. At least
# 100,000 characters are kept, for runs that use a longer max_seq_length than the statistics did.
CHARS_PER_TOKEN = 32
MIN_ROW_CHARS = 100_000


class BadRow(UserError):
    """A row that is broken (bad JSON, missing field): fatal unless the user skips bad rows."""

    def __init__(self, message: str, reason: str, *, zh: str | None = None):
        super().__init__(message, zh=zh)
        self.reason = reason


class Dropped(Exception):
    """A readable row with nothing to learn from; counted under `reason`, never fatal."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# The reasons rows are dropped under (BadRow.reason, Dropped.reason), counted in a dataset's manifest in English, in
# Chinese; the ones that name a field ("no output", "history not a list") by their pattern.
REASONS_ZH = {"invalid JSON": "JSON 格式错误", "not an object": "不是 JSON 对象", "not UTF-8": "不是 UTF-8 文本",
              "wrong number of cells": "单元格数与表头不符", "bad history": "history 格式不对",
              "reply without question": "回复前没有问题", "empty output": "回答为空", "empty instruction": "问题为空",
              "empty text": "文本为空", "no assistant reply": "没有助手的回答"}
_PATTERNS_ZH = ((re.compile(r"no (\w+)"), "缺少 `{}` 字段"), (re.compile(r"(\w+) not text"), "`{}` 不是文本"),
                (re.compile(r"(\w+) not a list"), "`{}` 不是列表"), (re.compile(r"unknown (\w+)"), "`{}` 未知"))


def reason_zh(reason: str) -> str:
    """A drop reason in Chinese (the English one where it has none)."""
    if reason in REASONS_ZH:
        return REASONS_ZH[reason]
    for pattern, words in _PATTERNS_ZH:
        if found := pattern.fullmatch(reason):
            return words.format(found.group(1))
    return reason


# ---- containers ---------------------------------------------------------------------
def container(path: Path) -> str:
    """'jsonl', 'json' (an array) or 'csv', from the extension and the first character."""
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path", zh=f"{path}：找不到文件，请检查路径")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; choose a data file inside it", zh=f"{path}：这是文件夹，请选择其中的数据文件")
    if not path.is_file():  # a device (/dev/zero), a pipe, a socket: reading could never end
        raise UserError(f"{path}: is not a regular file; choose a data file", zh=f"{path}：不是普通文件，请选择数据文件")
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # what Windows Notepad calls "Unicode"
        raise UserError(f"{path}: the file is saved as UTF-16; save it as UTF-8", zh=f"{path}：文件是 UTF-16 编码，请另存为 UTF-8")
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise UserError(f"{path}: the file is empty; choose a file with one row per line",
                        zh=f"{path}：文件是空的，请选择每行一条数据的文件")
    if head[:1] == b"[":
        return "json"
    if head[:1] == b"{":
        return "jsonl"
    raise UserError(f"{path}: not JSON lines, a JSON array or CSV (it starts with {head[:20]!r}); "
                    "save it as .jsonl with one JSON object per line, or as .csv",
                    zh=f"{path}：不是 JSON lines、JSON 数组或 CSV（开头是 {head[:20]!r}）；"
                       "请另存为每行一个 JSON 对象的 .jsonl，或 .csv")


def records(path: Path, digest=None) -> Iterator[tuple[str, dict]]:
    """(where, record) for every record of the file; `where` reads like 'data.jsonl line 7'."""
    kind = container(path)
    reader = {"jsonl": _jsonl, "json": _json_array, "csv": _csv}[kind]
    empty = True
    for where, rec in reader(path, digest):
        empty = False
        yield where, rec
    if empty:
        raise UserError(f"{path}: the file is empty (no rows); choose a file with one row per line",
                        zh=f"{path}：文件是空的（没有数据行），请选择每行一条数据的文件")


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRow(f"{where}: not UTF-8 text (byte {e.start + 1} of the line is 0x{raw[e.start]:02x}); "
                     "save the file as UTF-8 (it may be GBK)", "not UTF-8",
                     zh=f"{Text(where).zh}：不是 UTF-8 文本（该行第 {e.start + 1} 个字节是 0x{raw[e.start]:02x}）；"
                        "请把文件另存为 UTF-8（它可能是 GBK 编码）") from None


def _hashing(path: Path, digest):
    """The file's lines as bytes, fed to the hash as they go by."""
    with path.open("rb") as f:
        for raw in f:
            if digest is not None:
                digest.update(raw)
            yield raw


def _jsonl(path: Path, digest) -> Iterator[tuple[str, dict]]:
    for n, raw in enumerate(_hashing(path, digest), 1):
        where = Text(f"{path.name} line {n}", f"{path.name} 第 {n} 行")
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            text = _decode(raw, where).rstrip("\r\n")  # so that a cut-off row names its own column
            rec = json.loads(text)
            if not isinstance(rec, dict):
                raise BadRow(f"{where}: expected a JSON object {{...}}, found {type(rec).__name__}", "not an object",
                             zh=f"{Text(where).zh}：应为 JSON 对象 {{...}}，实际是 {type(rec).__name__}")
        except json.JSONDecodeError as e:
            hint, hint_zh = ("; JSON lines need one whole object per line", "；JSON lines 要求每行一个完整对象") \
                if n == 1 else ("", "")
            rec = BadRow(f"{where}: invalid JSON at column {e.colno}: {e.msg}{hint}", "invalid JSON",
                         zh=f"{Text(where).zh}：第 {e.colno} 列 JSON 格式错误：{json_zh(e.msg)}{hint_zh}")
        except BadRow as e:
            rec = e
        yield where, rec


def _json_array(path: Path, digest) -> Iterator[tuple[str, dict]]:
    """Objects of a top-level JSON array, decoded one by one from a sliding buffer."""
    dec = json.JSONDecoder()
    f = path.open("rb")
    buf, pos, line, row, eof, first = "", 0, 1, 0, False, True
    tail = b""  # a UTF-8 character cut in two by the chunk boundary

    def more() -> bool:
        nonlocal buf, pos, eof, tail, first
        chunk = f.read(CHUNK)
        if digest is not None:
            digest.update(chunk)
        if not chunk:
            eof = True
            return False
        chunk, tail = tail + chunk, b""
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.end == len(chunk) and len(chunk) - e.start < 4:
                text, tail = chunk[: e.start].decode("utf-8"), chunk[e.start:]
            else:
                at = line + buf[pos:].count("\n") + chunk[: e.start].count(b"\n")
                raise UserError(f"{path.name} line {at}: not UTF-8 text (byte 0x{chunk[e.start]:02x}); "
                                "save the file as UTF-8 (it may be GBK)",
                                zh=f"{path.name} 第 {at} 行：不是 UTF-8 文本（字节 0x{chunk[e.start]:02x}）；"
                                   "请把文件另存为 UTF-8（它可能是 GBK 编码）") from None
        if first:
            text, first = text.lstrip("\ufeff"), False
        buf, pos = buf[pos:] + text, 0
        return True

    def skip(chars: str) -> str:
        """Skip whitespace and `chars`; return the next character ('' at end of file)."""
        nonlocal pos, line
        while True:
            while pos < len(buf) and (buf[pos].isspace() or buf[pos] in chars):
                line += buf[pos] == "\n"
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    with f:
        if skip("") != "[":
            raise UserError(f"{path.name} line {line}: a JSON array must start with '['",
                            zh=f"{path.name} 第 {line} 行：JSON 数组必须以 '[' 开头")
        pos += 1
        while True:
            c = skip(",")
            if c == "]" or c == "":
                if c == "":
                    raise UserError(f"{path.name} line {line}: the JSON array is not closed with ']'",
                                    zh=f"{path.name} 第 {line} 行：JSON 数组没有用 ']' 结束")
                return
            row += 1
            where = Text(f"{path.name} row {row} (line {line})", f"{path.name} 第 {row} 条（第 {line} 行）")
            while True:
                try:
                    rec, end = dec.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    # Maybe the object runs past the buffer: read more; at the end it is really broken.
                    if not eof and more():
                        continue
                    raise UserError(f"{path.name} line {line + buf.count(chr(10), pos, e.pos)}: "
                                    f"invalid JSON: {e.msg}",
                                    zh=f"{path.name} 第 {line + buf.count(chr(10), pos, e.pos)} 行："
                                       f"JSON 格式错误：{json_zh(e.msg)}") from None
            line += buf.count("\n", pos, end)
            pos = end
            if not isinstance(rec, dict):
                rec = BadRow(f"{where}: expected a JSON object {{...}}, found {type(rec).__name__}", "not an object",
                             zh=f"{Text(where).zh}：应为 JSON 对象 {{...}}，实际是 {type(rec).__name__}")
            yield where, rec


def _csv(path: Path, digest) -> Iterator[tuple[str, dict]]:
    state = {"line": 0}

    def lines():
        for raw in _hashing(path, digest):
            state["line"] += 1
            if state["line"] == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield _decode(raw, f"{path.name} line {state['line']}").replace("\r\n", "\n")

    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.reader(lines(), dialect=dialect)
    header, end = None, 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num  # a quoted cell may span lines: name the first
            if header is None:
                header = [h.strip() for h in cells]
                continue
            if not any(c.strip() for c in cells):
                continue
            where = Text(f"{path.name} line {start}", f"{path.name} 第 {start} 行")
            if len(cells) > len(header):
                yield where, BadRow(f"{where}: {len(cells)} cells but the header has {len(header)} columns; "
                                    "put quotes around text that contains commas", "wrong number of cells",
                                    zh=f"{Text(where).zh}：有 {len(cells)} 个单元格，但表头有 {len(header)} 列；"
                                       "含逗号的文本请加上引号")
                continue
            yield where, dict(zip(header, cells, strict=False))  # missing cells: the layout check names them
    except csv.Error as e:
        raise UserError(f"{path.name} line {reader.line_num}: broken CSV: {e}",
                        zh=f"{path.name} 第 {reader.line_num} 行：CSV 格式损坏：{e}") from None


# ---- layouts ------------------------------------------------------------------------
def layout_of(rec: dict, where: str) -> str:
    """The layout one record looks like, or a UserError listing the keys it has."""
    if "conversations" in rec:
        return "sharegpt"
    if "messages" in rec:
        return "messages"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "text" in rec:
        return "text"
    keys = ", ".join(sorted(map(str, rec))) or "none"
    raise UserError(f"{where}: unknown layout (keys found: {keys}); expected instruction/input/output, "
                    "conversations (ShareGPT), messages (OpenAI chat) or text",
                    zh=f"{Text(where).zh}：无法识别的数据格式（找到的键：{keys}）；应为 instruction/input/output、"
                       "conversations（ShareGPT）、messages（OpenAI 对话）或 text")


def normalize(rec: dict, layout: str, where: str) -> dict:
    """The conversation dict core.template renders, BadRow if broken, Dropped if empty."""
    if isinstance(rec, BadRow):
        raise rec
    return {"alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages, "text": _text}[layout](rec, where)


def _str(rec: dict, key: str, where: str, required: bool = True) -> str:
    if key not in rec or rec[key] is None:
        if required:
            raise BadRow(f"{where}: the row has no `{key}` field", f"no {key}", zh=f"{Text(where).zh}：这一行没有 `{key}` 字段")
        return ""
    v = rec[key]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise BadRow(f"{where}: `{key}` must be text, found {type(v).__name__}", f"{key} not text",
                     zh=f"{Text(where).zh}：`{key}` 必须是文本，实际是 {type(v).__name__}")
    return v


def _alpaca(rec: dict, where: str) -> dict:
    instruction = _str(rec, "instruction", where)
    output = _str(rec, "output", where)
    inp = _str(rec, "input", where, required=False)
    if not output.strip():
        raise Dropped("empty output")
    if not instruction.strip() and not inp.strip():
        raise Dropped("empty instruction")
    system = _str(rec, "system", where, required=False)
    return {"system": system, "turns": _history(rec, where) + [{
        "instruction": instruction.strip() or inp.strip(), "input": inp.strip() if instruction.strip() else "",
        "output": output}]}


def _history(rec: dict, where: str) -> list[dict]:
    """Earlier turns of an alpaca row, as [[question, answer], ...] in `history` (a common extension)."""
    hist = rec.get("history") or []
    if not isinstance(hist, list) or any(not isinstance(h, list) or len(h) != 2 for h in hist):
        raise BadRow(f"{where}: `history` must be a list of [question, answer] pairs", "bad history",
                     zh=f"{Text(where).zh}：`history` 必须是 [问题, 回答] 对的列表")
    return [{"instruction": str(q), "input": "", "output": str(a)} for q, a in hist]


def _text(rec: dict, where: str) -> dict:
    text = _str(rec, "text", where)
    if not text.strip():
        raise Dropped("empty text")
    return {"text": text}


def _sharegpt(rec: dict, where: str) -> dict:
    return _chat(rec, "conversations", "from", "value", where)


def _messages(rec: dict, where: str) -> dict:
    return _chat(rec, "messages", "role", "content", where)


def _chat(rec: dict, key: str, role_key: str, text_key: str, where: str) -> dict:
    """Messages -> turns: consecutive user messages are joined; a reply closes a turn."""
    msgs = rec.get(key)
    if not isinstance(msgs, list):
        raise BadRow(f"{where}: `{key}` must be a list of messages", f"{key} not a list",
                     zh=f"{Text(where).zh}：`{key}` 必须是消息列表")
    system, turns, pending = "", [], []
    for i, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or role_key not in m:
            raise BadRow(f"{where}: message {i} of `{key}` has no `{role_key}`", f"no {role_key}",
                         zh=f"{Text(where).zh}：`{key}` 的第 {i} 条消息没有 `{role_key}`")
        role = str(m[role_key]).strip().lower()
        text = _str(m, text_key, Text(f"{where}: message {i}", f"{Text(where).zh} 第 {i} 条消息"))
        if role == "system":
            system = f"{system}\n{text}" if system else text
        elif role in USER_ROLES:
            pending.append(text)
        elif role in ASSISTANT_ROLES:
            if not pending:
                raise BadRow(f"{where}: message {i} is a reply ({m[role_key]}) with no question before it",
                             "reply without question",
                             zh=f"{Text(where).zh}：第 {i} 条消息是回复（{m[role_key]}），但前面没有问题")
            turns.append({"instruction": "\n".join(pending), "input": "", "output": text})
            pending = []
        else:
            raise BadRow(f"{where}: message {i} has an unknown {role_key} {m[role_key]!r}; use "
                         f"{'human, gpt' if key == 'conversations' else 'user, assistant'} or system",
                         f"unknown {role_key}",
                         zh=f"{Text(where).zh}：第 {i} 条消息的 {role_key} 未知：{m[role_key]!r}；请用 "
                            f"{'human、gpt' if key == 'conversations' else 'user、assistant'} 或 system")
    # A question left without a reply teaches nothing: it is dropped with the rest kept.
    if not turns:
        raise Dropped("no assistant reply")
    if any(not t["output"].strip() for t in turns):
        raise Dropped("empty output")
    return {"system": system, "turns": turns}


def rows(path: Path, fmt: str = "auto", digest=None) -> Iterator[tuple[str, str, dict | Exception]]:
    """(layout, where, normalized row or the BadRow/Dropped it raised) for every record."""
    layout = None if fmt == "auto" else fmt
    for where, rec in records(path, digest):
        if layout is None:
            if isinstance(rec, BadRow):
                yield "", where, rec  # the first readable row decides the layout
                continue
            layout = layout_of(rec, where)
        try:
            yield layout, where, normalize(rec, layout, where)
        except (BadRow, Dropped) as e:
            yield layout, where, e


# ---- bounds -------------------------------------------------------------------------
def row_chars(max_seq_length: int) -> int:
    """The most characters of one row that prepare keeps (see CHARS_PER_TOKEN)."""
    return max(CHARS_PER_TOKEN * max_seq_length, MIN_ROW_CHARS)


def bound(row: dict, limit: int) -> tuple[dict, bool]:
    """(the row cut to `limit` characters, whether it was cut): the beginning is kept, as in training.

    Fields count in the order they are rendered (system, then each turn's instruction, input and
    output); turns that start after the limit are left out.
    """
    if "text" in row:
        return ({"text": row["text"][:limit]}, True) if len(row["text"]) > limit else (row, False)
    fields = ("instruction", "input", "output")
    if len(row["system"]) + sum(len(t[k]) for t in row["turns"] for k in fields) <= limit:
        return row, False
    left = limit

    def take(text: str) -> str:
        nonlocal left
        text = text[:max(left, 0)]
        left -= len(text)
        return text

    system = take(row["system"])
    turns = []
    for turn in row["turns"]:
        if left <= 0 and turns:  # the first turn always stays: a row without one renders nothing
            break
        turns.append({**turn, **{k: take(turn[k]) for k in fields}})
    return {**row, "system": system, "turns": turns}, True
