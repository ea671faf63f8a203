"""Will it fit: the memory a model needs for chat, from its folder alone, and the precision chosen."""

from __future__ import annotations

import pytest

from core import fit
from core.errors import UserError


def test_needs_from_the_headers_and_the_config(base_model):
    total, edges = fit.parameters(base_model)
    assert 134_000_000 < total < 136_000_000 and edges == 49152 * 576  # tied: the head is the embedding
    # 30 layers x 3 kv heads x 64 dims x 4096 tokens x 2 (k and v) x 2 bytes
    assert fit.cache_bytes(base_model) == 2 * 30 * 3 * 64 * 4096 * 2
    need = fit.needs(base_model)
    assert need["16bit"] > need["8bit"] > need["4bit"] > fit.MARGIN


def test_auto_takes_the_largest_precision_that_fits(base_model):
    need = fit.needs(base_model)
    assert fit.choose(base_model, need["16bit"])[0] == "16bit"
    assert fit.choose(base_model, need["16bit"] - 1)[0] == "8bit"
    precision, info = fit.choose(base_model, need["8bit"] - 1)
    assert precision == "4bit" and "4-bit: 16-bit needs" in fit.words(precision, info)
    with pytest.raises(UserError, match="even in 4-bit this model needs about"):
        fit.choose(base_model, need["4bit"] - 1)
    with pytest.raises(UserError, match="precision: 16bit needs about"):
        fit.choose(base_model, need["8bit"], "16bit")


def test_int4_is_chosen_only_when_asked_and_checked_like_the_others(base_model):
    need = fit.needs(base_model)
    assert need["8bit"] > need["int4"] > fit.MARGIN
    # auto never picks int4 (its first load compiles: a choice to make knowingly); asked for, it is checked
    assert {fit.choose(base_model, free)[0] for free in (need["16bit"], need["8bit"], need["4bit"])} == {
        "16bit", "8bit", "4bit"}
    assert fit.choose(base_model, need["int4"], "int4")[0] == "int4"
    with pytest.raises(UserError, match="precision: int4 needs about"):
        fit.choose(base_model, need["int4"] - 1, "int4")
