"""Every message core/ shows a user carries its Chinese next to its English."""

import ast
import pickle
from pathlib import Path

import pytest

from core import errors
from core.config import TrainConfig
from core.errors import Text, UserError

CORE = Path(__file__).resolve().parent.parent / "core"
TEXT_MAKERS = {"Text", "of"}  # calls that make a two-language message


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _two_languages(node: ast.AST) -> bool:
    """A message expression that carries Chinese: Text(...) / errors.of(...), or one passed along."""
    if isinstance(node, ast.Call):
        return _name(node.func) in TEXT_MAKERS
    # A name or item handed on (`problems[0]`) is a message made, with its Chinese, elsewhere.
    if isinstance(node, ast.BoolOp):  # `hint or RESUME_HINT`
        return all(_two_languages(v) for v in node.values)
    return isinstance(node, (ast.Name, ast.Subscript, ast.Attribute))


def _sites():
    for path in sorted(CORE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            yield path.name, node


def test_every_user_error_has_chinese():
    missing = []
    for name, node in _sites():
        if not (isinstance(node, ast.Call) and _name(node.func) in ("UserError", "BadRow") and node.args):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        if "zh" not in kw and not _two_languages(node.args[0]):
            missing.append(f"{name}:{node.lineno} message")
        hint = kw.get("hint")
        if hint is not None and "hint_zh" not in kw and not _two_languages(hint):
            missing.append(f"{name}:{node.lineno} hint")
    assert not missing, "UserError without Chinese (add zh=... / hint_zh=...): " + ", ".join(missing)


def test_every_validate_message_has_chinese():
    tree = ast.parse((CORE / "config.py").read_text(encoding="utf-8"))
    missing, seen = [], 0
    for fn in ast.walk(tree):
        if not (isinstance(fn, ast.FunctionDef) and fn.name in ("validate", "_rules")):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and _name(node.func) == "append" and node.args:
                seen += 1
                if not (isinstance(node.args[0], ast.Call) and _name(node.args[0].func) in TEXT_MAKERS):
                    missing.append(f"config.py:{node.lineno}")
    assert seen > 20  # the walk found the messages
    assert not missing, "validate() message without Chinese (use Text(en, zh)): " + ", ".join(missing)


def test_a_message_in_each_language():
    e = UserError("out: choose a run folder", zh="out：请选择运行文件夹", hint="Pick one", hint_zh="选一个")
    assert str(e) == "out: choose a run folder"
    assert errors.text(e, "zh") == "out：请选择运行文件夹"
    assert errors.text(e, "en") == str(e)
    assert errors.hint(e, "zh") == "选一个" and errors.hint(e, "en") == "Pick one"
    assert errors.text(UserError("only English"), "zh") == "only English"  # falls back
    again = pickle.loads(pickle.dumps(e))
    assert errors.text(again, "zh") == e.zh and again.field is None


def test_validate_messages_stay_english_strings_and_carry_chinese():
    problems = TrainConfig(data="", out="x", lora_r=0).validate()
    assert "data: choose a prepared dataset" in problems  # plain English, as callers expect
    assert all(isinstance(p, Text) and p.zh != str(p) for p in problems)
    with pytest.raises(UserError) as e:
        TrainConfig(data="", out="x").check()
    assert str(e.value) == "data: choose a prepared dataset"
    assert "数据集" in errors.text(e.value, "zh")
