"""Side by side chat: two models answer one after the other, errors reach the reader, closing stops the reply."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import UserError


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


# ---- several GPUs: which one a chat model goes on ------------------------------------------------
H200 = 140.0


@pytest.fixture
def machine(monkeypatch):
    """A machine with the GPUs given (GiB used on each), all visible to the panel, and Chat.load recording its
    arguments instead of loading a model; returns the list of recorded loads."""
    from core import gpus, jobs, monitor
    from core.chat import Chat
    from ui import chat

    loads: list[dict] = []

    def fake(used: list[float], visible: str | None = None):
        cards = [{"index": i, "name": "NVIDIA H200", "memory_total_gb": H200, "memory_used_gb": u}
                 for i, u in enumerate(used)]
        monkeypatch.setattr(monitor, "snapshot", lambda: {"gpus": cards})
        monkeypatch.setattr(gpus, "count", lambda: len(cards))
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        return loads

    def load(self, model=None, adapter=None, *, precision="auto", gpus=None, **kw):
        loads.append({"model": model, "adapter": adapter, "precision": precision, "gpus": gpus})
        self.fitted = {}
        return "fake"

    monkeypatch.setattr(Chat, "load", load)
    monkeypatch.setattr(jobs, "current", lambda which=jobs.WORK: None)
    chat.release()
    yield fake
    chat.release()


def _training_on(monkeypatch, tmp_path, picked: str):
    """A training run of the panel going, started with the GPU picker at `picked` (its config.json records it)."""
    import json
    from types import SimpleNamespace

    from core import jobs

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"gpus": picked}))
    monkeypatch.setattr(jobs, "current", lambda which=jobs.WORK: SimpleNamespace(kind="train", folder=str(run)))


def _picker(demo, elem_id):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_gpu_picker_shows_only_on_a_machine_with_several_gpus(machine):
    import gradio as gr

    from ui import chat

    for used, shown in (([], False), ([1.0], False), ([1.0, 1.0], True)):
        machine(used)
        with gr.Blocks() as demo:
            chat.build()
        assert _picker(demo, "chat-gpus-a").visible is shown, used
    choices = _picker(demo, "chat-gpus-a").choices
    assert choices[0] == ("automatic: the idle GPU with the most free memory", "")
    assert ("GPU 1 · NVIDIA H200 · 139 GiB free", "1") in choices
    assert ("all 2 GPUs, the model spread over them", "0,1") in choices
    # One GPU: the model loads as it always did, with no GPU named.
    machine([1.0])
    list(chat.prepare(None, "default", "", "auto"))
    assert machine([1.0])[-1]["gpus"] is None


def test_the_model_goes_on_the_idle_gpu_with_the_most_free_memory_not_the_training_runs(machine, monkeypatch, tmp_path):
    from ui import chat

    loads = machine([1.0, 100.0, 60.0])  # GPU 0 has the most free memory, but the run trains there
    _training_on(monkeypatch, tmp_path, "")  # the first GPU, as the Train tab's default
    notes = list(chat.prepare(None, "default", "", "auto"))
    assert loads == [{"model": "default", "adapter": None, "precision": "auto", "gpus": [2]}]
    assert not any("Training is running" in n for n in notes)  # it loads now: no GPU shared with the run
    assert "SmolLM2-135M-Instruct on GPU 2 (idle): loaded." in notes[-1] and "SmolLM2-135M-Instruct，位于 GPU 2（空闲）：已加载。" in notes[-1]
    # A new run on GPU 0 leaves the chat model on GPU 2 loaded; one on GPU 2 unloads it first.
    chat.release_for({0})
    list(chat.prepare(None, "default", "", "auto"))
    assert len(loads) == 1
    chat.release_for({2})
    (tmp_path / "run" / "config.json").write_text('{"gpus": "2"}')
    list(chat.prepare(None, "default", "", "auto"))
    assert len(loads) == 2 and loads[-1]["gpus"] == [0]  # the run on GPU 2 now: GPU 0 is the idle one


def test_a_picked_gpu_or_several_reach_the_load_in_torchs_numbering(machine):
    from ui import chat

    loads = machine([1.0, 1.0, 1.0])
    list(chat.prepare(None, "default", "", "auto", "1"))
    list(chat.prepare(None, "default", "", "auto", "0,2"))
    assert [load["gpus"] for load in loads] == [[1], [0, 2]]
    # The panel sees GPUs 1 and 2 only: torch numbers them 0 and 1.
    chat.release()
    loads = machine([1.0, 1.0, 1.0], visible="1,2")
    list(chat.prepare(None, "default", "", "auto", "2"))
    assert loads[-1]["gpus"] == [1]
    note = list(chat.prepare(None, "default", "", "auto", "0"))[-1]
    assert "GPU 0 is not one this panel can use" in note and "Traceback" not in note
    bad = list(chat.prepare(None, "default", "", "auto", "x"))[-1]
    assert "is not a list of GPU numbers such as 0,1" in bad and bad.count("\n") == 0
    assert len(loads) == 3  # neither of the last two loaded anything


def test_a_comparison_model_goes_on_another_gpu_when_one_is_free(machine, monkeypatch, tmp_path):
    from ui import chat

    loads = machine([1.0, 5.0, 10.0])
    list(chat.prepare(None, "default", "someone/other-model", "auto"))
    assert [(load["model"], load["gpus"]) for load in loads] == [("default", [0]), ("someone/other-model", [1])]
    # Each on its own pick; the second, left to choose, avoids the GPU the first was given.
    chat.release()
    loads.clear()
    list(chat.prepare(None, "default", "someone/other-model", "auto", "0", ""))
    assert [load["gpus"] for load in loads] == [[0], [1]]
    chat.release()
    loads.clear()
    list(chat.prepare(None, "default", "someone/other-model", "auto", "", "0"))
    assert [load["gpus"] for load in loads] == [[1], [0]]
    # Two GPUs, one training: both chat models share the idle one.
    chat.release()
    loads = machine([1.0, 5.0])
    loads.clear()
    _training_on(monkeypatch, tmp_path, "0")
    list(chat.prepare(None, "default", "someone/other-model", "auto"))
    assert [load["gpus"] for load in loads] == [[1], [1]]


def test_the_fit_note_uses_the_free_memory_of_the_picked_gpu(machine, base_model, monkeypatch, tmp_path):
    from core import fit
    from core.chat import Chat
    from ui import chat

    need = fit.needs(base_model)
    between = (need["8bit"] + need["16bit"]) / 2 / 2**30  # GiB free where 16-bit does not fit but 8-bit does
    machine([1.0, H200 - between, 40.0])
    _training_on(monkeypatch, tmp_path, "0")
    auto = chat.fit_badge(None, "default", "auto")
    assert "on GPU 2 (idle): ✅ Loads in 16-bit" in auto and "100.0 GiB free" in auto, auto
    one = chat.fit_badge(None, "default", "auto", "1")
    assert "on GPU 1 (as chosen): ⚠️ Loads in 8-bit" in one and f"{between:.1f} GiB free" in one, one
    assert "GPU 0 (a training run uses it too): ✅ Loads in 16-bit" in chat.fit_badge(None, "default", "auto", "0")
    # Spread: the two GPUs' free memory together, less the second one's own margin (as the loader counts it).
    both = chat.fit_badge(None, "default", "auto", "1,2")
    usable = between + 100 - fit.MARGIN / 2**30
    assert "on GPUs 1, 2 (the model spread over them): ✅" in both and f"{usable:.1f} GiB free" in both, both

    # After a reply, the note says where the model went and how it was fitted there.
    def load(self, model=None, adapter=None, *, precision="auto", gpus=None, **kw):
        self.fitted = {"asked": "auto", "precision": "16bit", "free": 100 * 2**30, "need": need}
        self.model = object()

    def stream(self, history, message, gen=None):
        yield "Hello."

    monkeypatch.setattr(Chat, "load", load)
    monkeypatch.setattr(Chat, "stream", stream)
    monkeypatch.setattr(Chat, "close", lambda self: None)
    *_, (_, pane, _, note) = chat.respond(None, "Hi!", [], [], "default", "", "", "auto", 0.0, 1.0, 0, 1.0, 6)
    assert pane[-1]["content"] == "Hello."
    assert "SmolLM2-135M-Instruct on GPU 2 (idle): Loaded in 16-bit" in note, note
    assert "Training is running" not in note


@pytest.fixture
def two_panes(monkeypatch):
    """respond() with the loading left out: `where` says where each source's model is, `answer` writes its replies."""
    from ui import chat

    where: dict = {}
    monkeypatch.setattr(chat, "keep_only", lambda *a: None)
    monkeypatch.setattr(chat, "_plan", lambda panes, precision: [where.get(source) for source, _ in panes])
    monkeypatch.setattr(chat, "_training", lambda request, places: "")
    monkeypatch.setattr(chat, "_loads", lambda *a: iter(()))
    monkeypatch.setattr(chat, "_model", lambda source, precision, pick="", where=None: source)
    monkeypatch.setattr(chat, "_fitted", lambda panes, loaded, precision, note, request: "")
    monkeypatch.setattr(chat, "_speed", lambda source, loaded, request: f"{source} done")

    def respond(answer):
        monkeypatch.setattr(chat, "_answer", answer)
        return chat.respond(None, "Hi!", [], [], "a", "b", "", "auto", 0.0, 1.0, 0, 1.0, 6)

    return where, respond


@pytest.mark.parametrize("gpus_a, gpus_b", [((0,), (1,)), ((0,), (0,)), ((0, 1), (1,)), (None, None)])
def test_two_models_answer_one_after_the_other_wherever_they_are(two_panes, gpus_a, gpus_b):
    """On one GPU (or the CPU) two models at once would each wait for the other's steps, and two compiled models
    writing at once make the GPU fault (H200): the second reply starts when the first has ended."""
    from ui import chat

    where, respond = two_panes
    where.update(a=gpus_a and chat.Place(gpus_a, "idle"), b=gpus_b and chat.Place(gpus_b, "idle"))
    order = []

    def answer(pane, history, message, gen):
        for i in range(3):
            order.append(pane[0])
            yield [*history, {"role": "assistant", "content": f"{pane[0]}{i}"}]
            time.sleep(0.02)

    updates = list(respond(answer))
    _, pane_a, pane_b, note = updates[-1]
    assert pane_a[-1]["content"] == "a2" and pane_b[-1]["content"] == "b2" and note == "a done  \nb done"
    assert order == ["a"] * 3 + ["b"] * 3
    assert [u[1][-1]["content"] if u[1] else None for u in updates[:3]] == ["a0", "a1", "a2"]  # A streams first
    # The message box is emptied by the first update alone: the others leave what the user types meanwhile.
    assert updates[0][0] == "" and all(isinstance(u[0], dict) and "value" not in u[0] for u in updates[1:]), updates


def test_an_error_in_the_first_reply_reaches_the_reader_and_the_second_does_not_start(two_panes):
    _, respond = two_panes
    started = []

    def answer(pane, history, message, gen):
        started.append(pane[0])
        yield [*history, {"role": "assistant", "content": "x"}]
        raise UserError("adapter: does not fit the model")

    updates = list(respond(answer))
    assert "does not fit the model" in updates[-1][3] and started == ["a"]


def test_closing_stops_the_reply_being_written(two_panes):
    _, respond = two_panes
    closed = threading.Event()

    def answer(pane, history, message, gen):
        try:
            while True:
                yield [*history, {"role": "assistant", "content": pane[0]}]
        finally:
            closed.set()

    replies = respond(answer)
    next(replies)
    replies.close()  # the browser went away
    assert closed.wait(timeout=10)


def _stoppable(monkeypatch):
    """Chat models that write until stopped (Chat.stop), recording which panes began a reply."""
    from ui import chat

    class Writer:
        def __init__(self, source):
            self.source, self.halt = source, threading.Event()

        def stop(self):
            self.halt.set()
            return True

    writers = {source: Writer(source) for source in ("a", "b")}
    monkeypatch.setattr(chat, "_model", lambda source, precision, pick="", where=None: writers[source])
    began = []

    def answer(pane, history, message, gen):
        began.append(pane[0])
        writer, text = writers[pane[0]], ""
        while not writer.halt.is_set() and len(text) < 200:
            text += pane[0]
            yield [*history, {"role": "assistant", "content": text}]
        yield [*history, {"role": "assistant", "content": text + "."}]  # the stream's whole reply, after the stop

    monkeypatch.setattr(chat, "_speed", lambda source, loaded, request: f"{source}: {loaded.halt.is_set()} tokens/s")
    return writers, began, answer


def test_stop_ends_the_reply_after_its_token_and_gives_its_speed_and_the_comparison_does_not_begin(two_panes, monkeypatch):
    """Stop ends the reply being written (Chat.stop) without cancelling the event: the reply's last text and its
    speed line still reach the page, and the comparison model, whose turn had not come, does not answer."""
    from ui import chat

    _, respond = two_panes
    writers, began, answer = _stoppable(monkeypatch)
    updates = []
    for update in respond(answer):
        updates.append(update)
        if len(updates) == 3:
            chat.stop_reply(None)
    _, pane_a, pane_b, note = updates[-1]
    assert writers["a"].halt.is_set() and began == ["a"], began
    assert pane_a[-1]["content"] == "aaa." and pane_b == [], (pane_a, pane_b)  # its text up to the stop, then whole
    assert note == "a: True tokens/s", note
    assert not isinstance(updates[-1][0], str), "the message box keeps what was typed meanwhile"


def test_a_comparison_stopped_before_its_first_word_leaves_no_empty_reply(two_panes, monkeypatch):
    """The first pane's reply ends by itself, the comparison's turn comes, and Stop comes before its first word:
    the comparison pane is left as if its turn had not come, not with the question and an empty reply."""
    from types import SimpleNamespace

    from ui import chat

    _, respond = two_panes
    monkeypatch.setattr(chat, "_model", lambda source, precision, pick="", where=None: SimpleNamespace(stop=bool))

    def answer(pane, history, message, gen):
        asked = [*history, {"role": "user", "content": message}]
        if pane[0] == "a":
            yield [*asked, {"role": "assistant", "content": "a whole reply"}]
            return
        yield [*asked, {"role": "assistant", "content": ""}]  # begun, nothing written yet
        chat.stop_reply(None)
        yield [*asked, {"role": "assistant", "content": ""}]

    *_, (_, pane_a, pane_b, _) = respond(answer)
    assert [m["content"] for m in pane_a] == ["Hi!", "a whole reply"] and pane_b == [], (pane_a, pane_b)


def test_a_message_sent_after_stop_is_answered_in_full(two_panes, monkeypatch):
    """Stop ends the replies begun before it; a message sent after it (typed ahead and queued, say) is answered."""
    from ui import chat

    _, respond = two_panes
    _, began, answer = _stoppable(monkeypatch)
    chat.stop_reply(None)
    time.sleep(0.01)  # time.monotonic() moves on
    *_, (_, pane_a, pane_b, note) = respond(answer)
    assert began == ["a", "b"] and len(pane_a[-1]["content"]) == len(pane_b[-1]["content"]) == 201
    assert note == "a: False tokens/s  \nb: False tokens/s", note


def test_stop_ends_the_real_models_reply_at_once_with_its_speed(base_model, monkeypatch):
    """The embedded model, compared with itself: Stop while the first pane writes a long reply ends it within a
    token or two, shows its speed under it, and the second pane does not answer."""
    import re
    import time as clock

    from core import jobs
    from ui import chat

    monkeypatch.setattr(jobs, "current", lambda which=jobs.WORK: None)
    chat.release()
    try:
        pressed, updates = None, []
        for update in chat.respond(None, "请详细介绍一下长城的历史。", [], [], "default", "default", "", "auto", 0.0, 1.0,
                                   0, 1.0, 400):
            updates.append(update)
            if pressed is None and update[1] and len(update[1][-1]["content"]) > 4:
                pressed = clock.monotonic()
                chat.stop_reply(None)
        took = clock.monotonic() - pressed
        _, pane_a, pane_b, note = updates[-1]
        speeds = re.findall(r"SmolLM2-135M-Instruct: [\d.]+ tokens/s, first token after \d+\.\d\d s \((\d+) tokens\)\.",
                            note)
        assert len(speeds) == 1 and int(speeds[0]) < 60, note  # one reply, stopped long before its 400 tokens
        assert pane_b == [] and pane_a[-1]["role"] == "assistant" and pane_a[-1]["content"], (pane_a, pane_b)
        assert took < 3, took
    finally:
        chat.release()


def test_a_message_sent_before_stop_that_waited_for_its_turn_is_not_answered(two_panes, monkeypatch):
    """Sent while another reply held the GPU's turn, then Stop: when its turn comes nothing is loaded or answered,
    and the message stays in the box (the browser's clock stamps the send and the Stop: CLOCK). The panes are left
    as they are: the histories it was sent with hold the reply as it was then, and writing them back cut it short."""
    import gradio as gr

    from ui import chat

    _stoppable(monkeypatch)
    monkeypatch.setattr(chat, "_loads", lambda *a: pytest.fail("a stopped message loads nothing"))
    chat.stop_reply(None, pressed_at=2_000)
    then = [{"role": "user", "content": "Tell me"}, {"role": "assistant", "content": "Once upon"}]  # at Send
    waited = list(chat.respond(None, "Hi!", then, then, "a", "b", "", "auto", 0.0, 1.0, 0, 1.0, 6, "", "", 1_000))
    assert len(waited) == 1 and waited[0][1:3] == (gr.update(), gr.update()), waited
    assert not isinstance(waited[0][0], str), "the message box keeps the message"
    # An empty message (a double click's second, say), sent while a reply is written, leaves the panes and the
    # note with its speed lines alike.
    assert list(chat.respond(None, "  ", then, then, "a", "b", "", "auto", 0.0, 1.0, 0, 1.0, 6))[0][1:] == (
        gr.update(), gr.update(), gr.update())


def test_a_message_with_no_model_chosen_is_not_answered_and_says_so(monkeypatch):
    """The Model box emptied: the default model answered, in a pane named "Chatbot". Now nothing is loaded or
    answered, the message stays in the box, the page says to pick a model, and the pane says none is chosen."""
    import gradio as gr

    from ui import chat

    monkeypatch.setattr(chat, "_loads", lambda *a: pytest.fail("no model is loaded"))
    said = list(chat.respond(None, "你好", [], [], "", "default", "", "auto", 0.0, 1.0, 0, 1.0, 6))
    assert len(said) == 1 and said[0][:3] == (gr.update(), gr.update(), gr.update()), said
    assert "Pick a model to chat with first" in said[0][3] and "请先在上面的“模型”里选择要对话的模型" in said[0][3]
    assert chat.label_a("")["label"] == "no model chosen"


def test_regenerate_writes_the_last_reply_again_in_both_panes_and_keeps_the_rest(two_panes, monkeypatch):
    """Regenerate takes back the last message's replies and answers it again with the settings now (here:
    greedy, 6 tokens); earlier turns, a pane that was not asked that message, and the box's text stay."""
    from ui import chat

    asked = []

    def answer(pane, history, message, gen):
        asked.append((pane[0], message, len(history), gen.temperature))
        yield [*history, {"role": "user", "content": message}, {"role": "assistant", "content": pane[0] + " again"}]

    monkeypatch.setattr(chat, "_answer", answer)
    two_turns = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                 {"role": "user", "content": [{"type": "text", "text": "Q2"}]}, {"role": "assistant", "content": "old"}]
    for hist_b, kept_b in ((two_turns, 2), (two_turns[:2], 2)):  # B was asked Q2 too; B was added after Q2
        asked.clear()
        updates = list(chat.regenerate(None, "typed meanwhile", two_turns, hist_b, "a", "b", "", "auto", 0.0, 1.0, 0,
                                       1.0, 6))
        _, pane_a, pane_b, note = updates[-1]
        assert asked == [("a", "Q2", 2, 0.0), ("b", "Q2", kept_b, 0.0)], asked
        assert pane_a == [*two_turns[:2], {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "a again"}]
        assert pane_b[-1] == {"role": "assistant", "content": "b again"} and pane_b[:2] == two_turns[:2]
        assert all(isinstance(u[0], dict) and "value" not in u[0] for u in updates), "the box keeps its text"
    nothing = list(chat.regenerate(None, "", [], [], "a", "b", "", "auto", 0.0, 1.0, 0, 1.0, 6))
    assert len(nothing) == 1 and "send a message first" in nothing[0][3] and "请先发送一条消息" in nothing[0][3]


def test_a_message_that_waited_while_a_reply_was_written_is_answered_on_that_reply_whole(two_panes, monkeypatch):
    """A message sent while a reply is written (Enter while Send's reply streams, or Regenerate) carries the panes
    as they were when it was sent: the reply half written, the comparison's not begun. Answered on those, the
    page lost the rest of that reply, and the model never saw it. It is answered on the panes as the reply left
    them; what another page holds, or panes cleared since, are not mixed in."""
    from types import SimpleNamespace

    from ui import chat

    def answer(pane, history, message, gen):
        for part in ("Once", "Once upon", "Once upon a time."):
            yield [*history, {"role": "user", "content": message}, {"role": "assistant", "content": f"{pane[0]}: {part}"}]

    monkeypatch.setattr(chat, "_answer", answer)
    page, other = SimpleNamespace(session_hash="page", headers={}), SimpleNamespace(session_hash="other", headers={})
    settings = ("a", "b", "", "auto", 0.0, 1.0, 0, 1.0, 6)
    first = chat.respond(page, "Tell me a story.", [], [], *settings)
    _, half_a, half_b, _ = next(first)  # the page, as the next message is sent: A half written, B not begun
    assert (half_a[-1]["content"], half_b) == ("a: Once", [])
    *_, (_, whole_a, whole_b, _) = first
    _, next_a, next_b, _ = list(chat.respond(page, "And then?", half_a, half_b, *settings))[-1]
    assert next_a[:2] == whole_a and next_b[:2] == whole_b and len(next_a) == len(next_b) == 4, (next_a, next_b)
    assert whole_b[-1]["content"] == "b: Once upon a time."
    # Regenerate sent at the same moment writes the last reply again on the panes as they are, not as then.
    _, again_a, _, _ = list(chat.regenerate(page, "", half_a, half_b, *settings))[-1]
    assert [m["content"] for m in again_a] == ["Tell me a story.", "a: Once upon a time.", "And then?",
                                               "a: Once upon a time."], again_a
    # Another page's panes are its own; after Clear, an empty pane is empty.
    assert len(list(chat.respond(other, "Hi", [], [], *settings))[-1][1]) == 2
    chat.cleared(page)
    assert len(list(chat.respond(page, "Hi", [], [], *settings))[-1][1]) == 2
    # A page closed: what the server held of it goes.
    chat.forget(page)
    assert list(chat.respond(page, "Hi", half_a, [], *settings))[-1][1][1]["content"] == "a: Once"
    # Also when it closed while a reply of its was still written: once that reply ends, nothing of it is held.
    writing = chat.respond(page, "Hi", [], [], *settings)
    next(writing)
    chat.forget(page)
    list(writing)
    assert "page" not in chat._shown and "page" not in chat._replying and "page" not in chat._closed


# ---- the conversation kept in the browser ------------------------------------------------------
def test_clear_stops_the_reply_and_empties_the_panes_only_after_its_last_words():
    """Clear during a reply: Stop's work first, then the panes are emptied once the reply has written its last
    words (emptied earlier, the reply wrote them back: the walk's "Clear does nothing")."""
    import threading
    import time
    from types import SimpleNamespace

    from ui import chat

    page = SimpleNamespace(session_hash="clearing", headers={})
    chat._replying.add("clearing")  # a reply of this page is being written; it ends 0.3 s from now
    threading.Timer(0.3, chat._replying.discard, ["clearing"]).start()
    start = time.monotonic()
    assert chat.cleared(page, pressed_at=1_000) == ([], [], "")
    assert time.monotonic() - start >= 0.3 and "clearing" not in chat._replying
    assert chat._stopped["clearing"][1] == 1_000  # what Stop records: a message sent before it is not answered
    chat.forget(page)


def test_a_reload_gives_back_the_conversation_and_its_models_where_they_still_exist(monkeypatch, tmp_path):
    """What the browser keeps after a message is what the page gets back on load: both panes as plain
    messages (a message sent as parts too), and the models; a model gone since, or a kept value that is not a
    conversation at all, gives the default instead of an error."""
    from types import SimpleNamespace

    import gradio as gr

    from ui import chat

    merged = str(tmp_path / "merged" / "mine")
    monkeypatch.setattr(chat, "sources", lambda language="en": [("base", "default"), ("merged · mine", merged)])
    hist_a = [{"role": "user", "content": [{"type": "text", "text": "你好"}]},
              {"role": "assistant", "content": "你好！我是小助手。", "metadata": None}]
    hist_b = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hello."}]
    kept = chat.keep(merged, "default", hist_a, hist_b)
    # A page whose copy of a reply is an earlier state of what the server wrote keeps the reply whole.
    page = SimpleNamespace(session_hash="keeper", headers={})
    chat._shown["keeper"] = [[*hist_a[:1], {"role": "assistant", "content": "你好！我是小助手。很高兴认识你"}], hist_b]
    assert chat.keep(merged, "default", hist_a, hist_b, page)["hist_a"][1]["content"] == "你好！我是小助手。很高兴认识你"
    chat.cleared(page)
    assert kept == {"source_a": merged, "source_b": "default",
                    "hist_a": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是小助手。"}],
                    "hist_b": hist_b}
    a, b, back_a, back_b, done = chat.restore(kept)
    assert (a["value"], b["value"], back_a, back_b, done) == (merged, "default", kept["hist_a"], hist_b, True)
    assert a["choices"][1] == ("merged · mine", merged) and b["choices"][0] == ("—", "")

    monkeypatch.setattr(chat, "sources", lambda language="en": [("base", "default")])  # the merged model deleted
    a, b, back_a, _, _ = chat.restore(kept)
    assert (a["value"], b["value"], back_a) == ("default", "default", kept["hist_a"])
    for broken in (None, "text", {"hist_a": "not a list", "source_a": 3}, {"hist_a": [1, {"role": "tool"}]}):
        a, b, back_a, back_b, _ = chat.restore(broken)
        assert (a["value"], b["value"], back_a, back_b) == ("default", "", [], [])
    # Once given back, what the page keeps later is not given back again (it is what the page shows).
    assert chat.restore(kept, True) == (gr.update(),) * 4 + (True,)


def test_the_browsers_key_is_made_once_per_workspace_and_only_its_owner_reads_it(monkeypatch, tmp_path):
    """gradio makes a new key at each start, after which the browser's copy can no longer be read: the panel's
    key is written once in the workspace, private, and read back at the next start."""
    import stat

    from ui import chat

    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path / "home"))
    first = chat.browser_key()
    assert len(first) >= 24 and chat.browser_key() == first
    key = tmp_path / "home" / "browser.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.read_text() == first
    assert [p.name for p in key.parent.iterdir()] == ["browser.key"], "nothing half written is left beside it"
