"""Side by side chat: two models answer at the same time, errors reach the reader, closing stops both."""

from __future__ import annotations

import threading

import pytest

from core.errors import UserError
from ui.chat import together


def test_two_replies_stream_at_the_same_time():
    b_started = threading.Event()
    seen = {}

    def a():
        yield "a1"
        # Run one after the other, A would wait here for B in vain.
        seen["b before a finished"] = b_started.wait(timeout=10)
        yield "a2"

    def b():
        b_started.set()
        yield "b1"
        yield "b2"

    updates = list(together(a(), b()))
    assert seen["b before a finished"]
    assert updates[-1] == ("a2", "b2")
    assert ("a1", None) in updates or (None, "b1") in updates  # each update carries the latest of both


def test_an_error_in_one_reply_reaches_the_reader_and_stops_the_other():
    stopped = threading.Event()

    def fails():
        yield "x"
        raise UserError("adapter: does not fit the model")

    def endless():
        try:
            while True:
                yield "y"
        finally:
            stopped.set()

    with pytest.raises(UserError, match="does not fit"):
        for _ in together(fails(), endless()):
            pass
    assert stopped.wait(timeout=10)


def test_closing_stops_both_replies():
    closed = [threading.Event(), threading.Event()]

    def stream(i):
        try:
            while True:
                yield i
        finally:
            closed[i].set()

    joint = together(stream(0), stream(1))
    next(joint)
    joint.close()  # the browser went away
    assert all(e.wait(timeout=10) for e in closed)


def test_a_reply_shows_its_speed_and_a_training_run_is_warned_about(base_model, monkeypatch):
    """While a run trains on this CPU-only machine nothing loads on picking a model; a message loads it, with
    progress, a warning that both share the CPU, and the reply's tokens/s and time to first token under it."""
    import re
    from types import SimpleNamespace

    from core import jobs
    from ui import chat

    monkeypatch.setattr(jobs, "current", lambda: SimpleNamespace(kind="train"))
    chat.release()
    warning = "Training is running: chat and training share the CPU, so both are slower."
    assert [warning in line for line in chat.prepare(None, "default", "", "auto")] == [True]
    try:
        # The model compared with itself: it answers in both panes, one after the other.
        updates = list(chat.respond(None, "Hi!", [], [], "default", "default", "", "auto", 0.0, 1.0, 0, 1.0, 6))
        notes = [u[3] for u in updates]
        assert any("SmolLM2-135M-Instruct: loading, " in n for n in notes)
        assert all(warning in n for n in notes)
        speed = r"SmolLM2-135M-Instruct: [\d.]+ tokens/s, first token after \d+\.\d\d s \(6 tokens\)\."
        assert len(re.findall(speed, notes[-1])) == 2, notes[-1]
        _, pane_a, pane_b, _ = updates[-1]
        assert pane_a[-1]["role"] == pane_b[-1]["role"] == "assistant" and pane_a[-1]["content"] == pane_b[-1]["content"]
    finally:
        chat.release()
