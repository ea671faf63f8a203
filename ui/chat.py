"""Chat tab: streaming chat with a merged model, a run's adapter or the base; optional side by side."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

import gradio as gr

from core import errors, fit, gpus, jobs, models, paths, runs
from core.config import GenerationConfig
from core.errors import Text, UserError
from ui import fit as fit_words
from ui import gpu_picker
from ui.forms import WARN, warn, widget
from ui.i18n import both, lang, say, t

ADAPTER = "adapter:"
GEN = ("precision", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")

_loaded: dict[str, object] = {}  # _key(source, precision, pick) -> core.chat.Chat; at most the two on screen
_placed: dict[str, "Place"] = {}  # the same keys -> the GPUs each went on, where the machine has several
_lock = threading.Lock()
# Stop, per browser session (gr.Request.session_hash): when it was last pressed, on this machine's clock
# (time.monotonic()) and on the browser's (ms, CLOCK), and the chat model writing that session's reply now.
# A message sent before the last Stop is not answered further (also one still waiting for its turn); one sent
# after it is.
_stopped: dict[str | None, tuple[float, float | None]] = {}
_writing: dict[str | None, object] = {}
# The panes as this session's replies last left them, or write them now. A message the page sends while a reply
# is still being written (Enter, Regenerate) carries the panes as they were then; it is answered on these.
_shown: dict[str, list[list]] = {}
# Sessions answering a message now; and of those, the ones whose page closed meanwhile, forgotten when it ends.
_replying: set[str | None] = set()
_closed: set[str | None] = set()
CLOCK = "(...values) => [...values.slice(0, {n} - 1), Date.now()]"
"""Front-end code run on a click before its handler: the last of its `n` inputs becomes the browser's time (ms)."""
SENT = ("(...values) => {{ const now = Date.now(), last = window.qsSent || {{}}; window.qsSent = {{text: values[0], now}};"
        " if (values[0] && values[0] === last.text && now - last.now < 1500) values[0] = '';"
        " return [...values.slice(0, {n} - 1), now]; }}")
"""CLOCK for Send and Enter, which also send while a reply is written (the message waits for its turn): the
same text sent again within 1.5 s (a double click, Enter and a click) goes as an empty message, not answered."""


@dataclass(frozen=True)
class Place:
    """The GPUs a chat model goes on (their numbers on the page) and why: "idle" (no training run uses it),
    "shared" (a training run uses it too) or "chosen" (picked by the user, no training run on it)."""

    gpus: tuple[int, ...]
    why: str

    def words(self, language: str = "en") -> str:
        """ "GPU 1 (idle)", "GPUs 0, 1 (the model spread over them)" """
        if len(self.gpus) > 1:
            return say("chat_on_spread", language, gpus=", ".join(map(str, self.gpus)))
        return say("chat_on_" + self.why, language, gpu=self.gpus[0])


def several() -> bool:
    """Whether the panel sees more than one GPU: only then does the tab let one choose where a model goes."""
    return len(gpus.visible()) > 1


def gpu_choices(language: str = "en") -> list[tuple[str, str]]:
    """The GPU pickers' choices: automatic, each GPU with its free memory, then all of them (the model spread)."""
    return gpu_picker.choices("gpu_auto", "gpu_spread", language)


def place(pick: str | None, avoid=frozenset()) -> Place | None:
    """Where a model goes with the GPU picker at `pick`: "" is the GPU with the most free memory that no training
    run uses, and not one in `avoid` (the other chat model's) while another is free; else the GPUs named
    ("1", "0,1"). None where there is nothing to choose (no GPU, or one): the model goes where it always did."""
    if not several():
        return None
    from core import monitor

    try:
        picked = [int(g) for g in gpus.parse(pick)]
    except ValueError as e:
        raise UserError(errors.of(e)) from None
    busy = jobs.training_gpus()
    if picked:
        for g in picked:
            gpus.torch_index(g)  # one this process cannot see is refused here, in words
        return Place(tuple(picked), "shared" if busy & set(picked) else "chosen")
    found = gpus.idlest(monitor.snapshot().get("gpus") or [], busy, avoid)
    return None if found is None else Place((found[0],), "shared" if found[1] else "idle")


def _key(source: str, precision: str, pick: str | None = "") -> str:
    return f"{precision}|{pick or ''}|{source}"


def _panes(source_a, source_b, pick_a="", pick_b="") -> list[tuple[str, str]]:
    """(source, GPU pick) of each model on screen, A first; one when B is none or the same model on the same pick."""
    wanted = [(source_a or "default", pick_a or ""), (source_b or "", pick_b or "")]
    return [pane for pane in dict.fromkeys(wanted) if pane[0]]


def _plan(panes: list[tuple[str, str]], precision: str) -> list[Place | None]:
    """Where each pane's model is (loaded) or goes: a model left to choose avoids the GPUs the other model is on or
    was given while another GPU is free, so that two models side by side each get a GPU of their own."""
    keys = [_key(source, precision, pick) for source, pick in panes]
    out = [_placed.get(key) for key in keys]

    def on(i: int) -> set[int]:
        return set(out[i].gpus) if out[i] else _numbers(panes[i][1])

    for i, (key, (_, pick)) in enumerate(zip(keys, panes, strict=True)):
        if key not in _loaded:
            out[i] = place(pick, set().union(*(on(j) for j in range(len(panes)) if j != i)))
    return out


def _numbers(pick: str | None) -> set[int]:
    try:
        return {int(g) for g in gpus.parse(pick)}
    except ValueError:  # said in words by place()
        return set()


def sources(language: str = "en") -> list[tuple[str, str]]:
    """Every model one can talk to: base and merged models, then each run's adapter, named in `language`."""
    # A merged model and the adapter of the same run must not look alike.
    merged = paths.merged().resolve()
    out = []
    for m in models.available():
        if m == "default":
            out.append((say("source_base", language, name="SmolLM2-135M-Instruct"), m))
        else:
            kind = "source_merged" if Path(m).resolve().parent == merged else "source_model"
            out.append((say(kind, language, name=Path(m).name), m))
    out += [(say("source_adapter", language, name=r["name"]), ADAPTER + r["adapter"]) for r in runs.list_runs() if r["adapter"]]
    return out


def pane_label(source: str | None, fallback, language: str = "en"):
    """The name of the model a chat pane shows, so two panes side by side say whose answers they are."""
    if not source:
        return fallback
    return next((name for name, value in sources(language) if value == source), Path(source.removeprefix(ADAPTER)).name)


def _unload(keep) -> None:
    """Close every loaded chat model whose key `keep(key)` does not keep, so its memory comes back."""
    with _lock:
        for key in [k for k in _loaded if not keep(k)]:
            _placed.pop(key, None)
            try:
                _loaded.pop(key).close()
            except Exception:
                pass


def release() -> None:
    """Unload every chat model so its GPU memory comes back."""
    _unload(lambda key: False)


def release_for(training: set[int]) -> None:
    """Before a run starts on the GPUs `training`: unload the chat models on them (all of them where there was no
    choice of GPU); a model on another GPU stays."""
    _unload(lambda key: key in _placed and not set(_placed[key].gpus) & training)


def _model(source: str, precision: str = "auto", loading: list | None = None, pick: str = "",
           where: Place | None = None):
    """The loaded Chat for a source, loading it on first use on `where` (`loading` gets it meanwhile, for progress)."""
    from core.chat import Chat

    key = _key(source, precision, pick)
    with _lock:
        if key not in _loaded:
            on = [gpus.torch_index(g) for g in where.gpus] if where else None  # this process's numbers for torch
            chat = Chat()
            if loading is not None:
                loading.append((source, chat, where))
            if source.startswith(ADAPTER):  # a run's adapter, on the base model its record names
                chat.load(adapter=str(paths.inside(source[len(ADAPTER):], paths.runs(), "model")), precision=precision,
                          gpus=on)
            else:
                chat.load(model=paths.model_spec(source), precision=precision, gpus=on)
            _loaded[key] = chat
            if where:
                _placed[key] = where
        return _loaded[key]


def keep_only(precision: str, panes: list[tuple[str, str]]) -> None:
    """Unload every model but those of `panes` ((source, GPU pick) each) in `precision`."""
    shown = {_key(s, precision, p) for s, p in panes}
    _unload(lambda key: key in shown)


def generation(system, *values) -> GenerationConfig:
    """The sampling widgets as one GenerationConfig."""
    return GenerationConfig.from_dict({"system": system or "", **dict(zip(GEN, values, strict=True))})


def _text(content) -> str:
    """A chatbot message's text, whether it came as a string or as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return ""


def _pairs(history: list) -> list[tuple[str, str]]:
    """Chatbot messages -> (user, assistant) pairs for the prompt template."""
    pairs, user = [], None
    for m in history or []:
        role, text = (m.get("role"), _text(m.get("content"))) if isinstance(m, dict) else (None, "")
        if role == "user":
            user = text
        elif role == "assistant" and user is not None:
            pairs.append((user, text))
            user = None
    return pairs


def _named(source: str, where: Place | None = None):
    """The model's name as each language writes it (for a message in both languages), with the GPUs it is on
    where there was a choice ("SmolLM2-135M-Instruct on GPU 1 (idle)")."""
    if where is None:
        return lambda language: pane_label(source, source, language)
    return lambda language: say("chat_at", language, name=pane_label(source, source, language), where=where.words(language))


def _loads(panes: list[tuple[str, str]], places: list, precision: str, request):
    """Load the models not loaded yet, each with its warm-up; yield a progress line about twice a second."""
    loading: list = []
    failure: list = []

    def work():
        try:
            for (source, pick), where in zip(panes, places, strict=True):
                _model(source, precision, loading, pick, where)
        except BaseException as e:  # raised to the reader below
            failure.append(e)

    thread = threading.Thread(target=work, name="chat-load", daemon=True)
    thread.start()
    wait = 0.05  # the first line at once (a small model may load in well under a second), then twice a second
    while thread.is_alive():
        thread.join(timeout=wait)
        wait = 0.5
        busy = [(source, chat, where) for source, chat, where in loading if chat.phase]
        if busy:
            source, chat, where = busy[-1]
            key = "chat_warming" if chat.phase == "warming" else "chat_loading"
            yield both(key, name=_named(source, where), s=f"{time.time() - chat.since:.0f}")
    if failure:
        raise failure[0]
    done = []  # a line for each model loaded (where it went, when there was a choice), together
    for source, chat, where in loading:
        name = _named(source, where)
        if chat.fallback:
            done.append(both("chat_plain", name=name, why=chat.fallback))
        elif chat.warmup_s is not None:
            done.append(both("chat_ready", name=name, s=f"{chat.warmup_s:.0f}"))
        elif where:
            done.append(both("chat_where", name=_named(source), where=where.words))
    if done:
        yield "  \n".join(done)


def _training(request, places: list | None = None) -> str:
    """A warning when a training run is going and chat shares its CPU, or its GPU's memory (with how much is free).

    `places`: where the chat's models go (None each where there is no choice of GPU); none of them on a GPU the
    run uses, nothing to warn about.
    """
    job = jobs.current()
    if job is None or job.kind != "train":
        return ""
    from core import chat

    places = places or [None]
    if all(places):
        shared = set().union(*(p.gpus for p in places)) & jobs.training_gpus()
        if not shared:
            return ""
        free = fit.machine(on=sorted(shared))["gpu"]
    else:
        free = chat.gpu_room()
    if free is None:
        return WARN + both("chat_training_cpu")
    return WARN + both("chat_training_gpu", free=f"{free / 2**30:.1f}")


def _speed(source: str, chat, request) -> str:
    """Tokens per second and time to the first token of the reply just written."""
    last = chat.last
    if not last.get("tokens"):
        return ""
    tps = f"{last['tokens_per_s']:.1f}" if last.get("tokens_per_s") else "—"
    return both("chat_speed", name=_named(source), tps=tps,
               first=f"{last['first_token_s']:.2f}", tokens=last["tokens"])


def prepare(request: gr.Request | None, source_a, source_b, precision, gpus_a="", gpus_b=""):
    """Load the models picked, warm-up included, so that the first message is answered at full speed.

    Nothing is loaded while a training run is going on the GPU (or the CPU) chat would use: the first message
    loads it then, with a warning. On a GPU no run uses, it loads now.
    """
    precision = precision or "auto"
    panes = _panes(source_a, source_b, gpus_a, gpus_b)
    try:
        keep_only(precision, panes)
        places = _plan(panes, precision)
        warning = _training(request, places)
        if warning:
            yield warning
            return
        line = ""
        for line in _loads(panes, places, precision, request):
            yield line
        yield line
    except UserError as e:
        yield warn(e, language=lang(request))
    except Exception as e:  # out of memory while loading: one line, memory given back
        from core import status

        release()
        error, hint = status.explain(e, "chat")
        yield warn(_failure(error, hint), language=lang(request))


def _answer(pane: tuple[str, str], history: list, message: str, gen: GenerationConfig):
    """Stream the reply of one pane's model ((source, GPU pick), loaded) into its chatbot history."""
    history = list(history or []) + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    chat = _model(pane[0], gen.precision, pick=pane[1])
    for text in chat.stream(_pairs(history[:-2]), message, gen):
        history[-1] = {"role": "assistant", "content": text}
        yield history
    yield history


def _as_shown(session: str | None, sent: list) -> list:
    """Each pane's history to answer on: what the page sent, unless the page sent it while a reply was still
    being written into the pane (a message that waited for its turn): then the pane as that reply left it."""
    shown = _shown.get(session) if session is not None else None
    if not shown:
        return sent
    out = []
    for mine, theirs in zip(sent, shown, strict=True):
        mine, theirs = _messages(mine), _messages(theirs)
        n = len(mine)
        # Empty: sent before this pane's reply began (Clear forgets what the server holds). Else the same
        # messages, the last one as far as it was written then.
        older = n == 0 or n <= len(theirs) and mine[:-1] == theirs[:n - 1] and mine[-1]["role"] == theirs[n - 1][
            "role"] and theirs[n - 1]["content"].startswith(mine[-1]["content"])
        out.append(theirs if older else mine)
    return out


def forget(request: gr.Request = None) -> None:
    """A page closed, or its panes cleared: what the server holds of its session goes."""
    session = _session(request)
    _shown.pop(session, None)
    _stopped.pop(session, None)
    if session in _replying:  # its reply goes on being written into _shown: forgotten again when it ends
        _closed.add(session)


def respond(request: gr.Request | None, message, hist_a, hist_b, source_a, source_b, system, precision, temperature,
            top_p, top_k, repetition_penalty, max_new_tokens, gpus_a="", gpus_b="", sent_at=None):
    """Send the message to the chosen model and, side by side, to the comparison model; replies stream.

    `gpus_a`, `gpus_b`: the GPU pickers of the two models ("" = the idlest GPU; see place()). `sent_at`: when the
    browser sent the message (its clock, ms; CLOCK), so that a Stop pressed while it waited for its turn holds it.
    """
    hist_a, hist_b = _as_shown(_session(request), [hist_a, hist_b])
    yield from _respond(request, message, hist_a, hist_b, source_a, source_b, system, precision, temperature, top_p,
                        top_k, repetition_penalty, max_new_tokens, gpus_a, gpus_b, sent_at)


def _respond(request, message, hist_a, hist_b, source_a, source_b, system, precision, temperature, top_p, top_k,
             repetition_penalty, max_new_tokens, gpus_a, gpus_b, sent_at):
    """respond() on the panes as they are."""
    # A message not answered leaves the panes as they are now: the histories it was sent with may be older (sent
    # while a reply was written, it waited for its turn), and writing them back would cut that reply short.
    if not message or not message.strip():  # the note too: the speed lines of the reply before stay
        yield gr.update(), gr.update(), gr.update(), gr.update()
        return
    if not source_a:  # the Model box emptied: nobody was asked, so nobody answers (the text stays in the box)
        yield gr.update(), gr.update(), gr.update(), both("pick_model")
        return
    note, session, started, histories = "", _session(request), time.monotonic(), [hist_a, hist_b]

    def stopped() -> bool:
        server, browser = _stopped.get(session, (started, None))
        return server > started or browser is not None and sent_at is not None and browser > sent_at

    if stopped():  # sent, then stopped before its turn came: not answered, and its text stays in the box
        yield gr.update(), gr.update(), gr.update(), gr.update()
        return

    _replying.add(session)
    try:
        gen = generation(system, precision, temperature, top_p, top_k, repetition_penalty, max_new_tokens)
        gen.check()
        panes = _panes(source_a, source_b, gpus_a, gpus_b)
        keep_only(gen.precision, panes)
        places = _plan(panes, gen.precision)
        # Loading a model next to training can run the GPU out of memory: say how much is free, still answer.
        note = _training(request, places)
        for line in _loads(panes, places, gen.precision, request):  # only if not loaded yet: normally done on picking
            yield gr.update(), hist_a, hist_b, "  \n".join(x for x in (note, line) if x)
        loaded = [_model(source, gen.precision, pick=pick, where=where)
                  for (source, pick), where in zip(panes, places, strict=True)]
        note = _fitted(panes, loaded, gen.precision, note, request)
        # One reply after the other, each at the speed its model has alone. At once, two models on one GPU would
        # each wait for the other's steps, and two compiled models writing at once in one process make the GPU
        # fault (an index out of bounds inside a compiled step: H200, torch 2.11, bench/chat_speed.py
        # --side-by-side), after which no model on that GPU answers until the panel restarts.
        # The message box is emptied once, as the reply starts: what the user types while it is written stays.
        # Stop (stop()) ends the reply being written after its current token, and the comparison's reply, if not
        # begun, does not begin; the replies written get their speed lines like any others.
        box, speeds = "", []
        shown = [(panes[0], loaded[0])] + ([(panes[-1], loaded[-1])] if source_b else [])  # B may be A's model
        for i, (pane, chat) in enumerate(shown):
            if stopped():
                break
            _writing[session] = chat
            before = histories[i]
            for history in _answer(pane, histories[i], message, gen):
                histories[i] = history
                if session is not None:
                    _shown[session] = list(histories)
                yield box, *histories, note
                box = gr.update()
                if stopped():
                    chat.stop()  # also a Stop that came while this reply was being set up
            if i and stopped() and not _text(histories[i][-1].get("content")):
                # The comparison stopped before its first word: as if its turn had not come (no empty reply left).
                histories[i] = before
                if session is not None:
                    _shown[session] = list(histories)
            speeds.append(_speed(pane[0], chat, request))
        yield gr.update(), *histories, "  \n".join(x for x in (note, *speeds) if x)
    except UserError as e:
        yield gr.update(), *histories, warn(e, language=lang(request))
        return
    except Exception as e:  # out of GPU memory while loading or answering, say: one line, memory given back
        from core import status

        error, hint = status.explain(e, "chat")
    else:
        return
    finally:
        _writing.pop(session, None)
        _replying.discard(session)
        if session in _closed:  # the page closed while this reply was written
            _closed.discard(session)
            _shown.pop(session, None)
    # Released once the exception is gone: its traceback's frames hold the tensors of the failed step.
    release()
    yield gr.update(), *histories, warn(_failure(error, hint), language=lang(request))


def _asked_last(history) -> int | None:
    """Where the last message the user sent begins in a pane's history (None: none sent)."""
    return next((i for i in range(len(history or []) - 1, -1, -1)
                 if isinstance(history[i], dict) and history[i].get("role") == "user"), None)


def regenerate(request: gr.Request | None, message, hist_a, hist_b, source_a, source_b, system, precision,
               temperature, top_p, top_k, repetition_penalty, max_new_tokens, gpus_a="", gpus_b="", sent_at=None):
    """Answer the last message again, with the settings as they are now: its replies are taken back in both
    panes (a pane that was not asked it keeps its history) and written anew; what is typed in the box stays."""
    hist_a, hist_b = _as_shown(_session(request), [hist_a, hist_b])
    at = _asked_last(hist_a)
    if at is None:
        yield gr.update(), gr.update(), gr.update(), both("nothing_to_regenerate")
        return
    asked = _text(hist_a[at].get("content"))
    b = _asked_last(hist_b)
    hist_b = hist_b[:b] if b is not None and _text(hist_b[b].get("content")) == asked else hist_b
    for _, *panes in _respond(request, asked, hist_a[:at], hist_b, source_a, source_b, system, precision, temperature,
                              top_p, top_k, repetition_penalty, max_new_tokens, gpus_a, gpus_b, sent_at):
        yield gr.update(), *panes


def stop_reply(request: gr.Request | None, pressed_at=None) -> None:
    """Stop: this browser's reply being written ends after its current token, a comparison reply not begun does
    not begin, and a message sent before Stop that still waits for its turn is not answered. respond() ends as it
    does by itself (nothing is cancelled), so the replies written get their speed lines. `pressed_at`: the
    browser's time (CLOCK)."""
    session = _session(request)
    _stopped[session] = (time.monotonic(), pressed_at)
    chat = _writing.get(session)
    if chat is not None:
        chat.stop()


def _session(request: gr.Request | None) -> str | None:
    """The browser session a request comes from (None outside a page: a direct call)."""
    return getattr(request, "session_hash", None)


def _failure(error, hint) -> Text:
    """What went wrong and what to do, on one line, in both languages (status.explain's words)."""
    if not hint:
        return Text(error, errors.text(error, "zh"))
    return Text(f"{error}; {hint}", f"{errors.text(error, 'zh')}；{errors.text(hint, 'zh')}")


def _fitted(panes: list[tuple[str, str]], chats: list, precision: str, note: str, request) -> str:
    """The note under the chat, with how each model was loaded on the GPU and why (core.fit's numbers), and on
    which GPU where there was a choice ("SmolLM2-135M-Instruct on GPU 1 (idle): Loaded in 16-bit: …")."""
    lines = [note] if note else []
    for (source, pick), chat in zip(panes, chats, strict=True):
        f, where = chat.fitted, _placed.get(_key(source, precision, pick))
        if f:
            gib = {k: f"{v / 2**30:.1f}" for k, v in f["need"].items()}
            key = "fit_chosen" if f["asked"] != "auto" else "fit_16" if f["precision"] == "16bit" else "fit_smaller"
            bits = "4 (int4)" if f["precision"] == "int4" else f["precision"][:-3]
            numbers = dict(bits=bits, need=gib[f["precision"]], need16=gib["16bit"], free=f"{f['free'] / 2**30:.1f}")
            lines.append(both("chat_at_fit", name=_named(source), where=where.words,
                              what=lambda language, key=key, numbers=numbers: say(key, language, **numbers))
                         if where else both(key, **numbers))
        elif where:
            lines.append(both("chat_where", name=_named(source), where=where.words))
    return "  \n".join(lines)


def fit_badge(request: gr.Request | None, source, precision, pick="") -> str:
    """Whether the chosen model loads in the free memory, and in which precision, before Send loads it.

    With several GPUs: the free memory of the GPU(s) it is on or goes on (`pick`, the tab's GPU picker), said first.
    """
    language = lang(request)
    try:
        source = source or "default"
        if source.startswith(ADAPTER):  # the base the run trained on carries the memory; the adapter is small
            _, spec = models.check_adapter(paths.inside(source[len(ADAPTER):], paths.runs(), "model"))
        else:
            spec = paths.model_spec(source)
        where = _plan([(source, pick or "")], precision or "auto")[0]
        have = fit.machine(on=list(where.gpus)) if where else None
        found = fit.check_chat(models.resolve(spec, fetch=False), have, asked=precision or "auto")
    except (UserError, OSError, ValueError):
        return ""
    if found["where"] == "ram" or found["verdict"] == "unknown":
        return fit_words.badge(found, language)
    need, gib = found["needs"], (lambda n: f"{n / 2**30:.1f}")
    bits, free = found["precision"][:-3], gib(found["free"])
    if found["verdict"] == "no":
        text, verdict = say("fit_chat_no", language, need=gib(need[found["precision"]]), free=free), "no"
    elif found["precision"] == "16bit" or precision not in (None, "", "auto"):
        text, verdict = say("fit_chat", language, bits=bits, need=gib(need[found["precision"]]), free=free), found["verdict"]
    else:
        text, verdict = say("fit_chat_smaller", language, bits=bits, need16=gib(need["16bit"]), free=free), "tight"
        if need.get("int4", found["free"] + 1) <= found["free"]:  # the fast 4-bit path fits: say it is there
            text += " " + say("fit_int4_hint", language)
    if where:
        text = say("chat_placed", language, where=where.words(language), what=text)
    return f"<div class='qs-fit qs-fit-{verdict}'>{escape(text)}</div>"


def unload():
    release()
    return both("released")


def cleared(request: gr.Request = None, pressed_at=None):
    """Clear: both panes and the note emptied, here and in what the server holds of them. A reply being written
    stops first (as with Stop, `pressed_at` the browser's time), and the panes are emptied after its last words:
    emptied while it was written, the reply wrote them back."""
    stop_reply(request, pressed_at)
    session, deadline = _session(request), time.monotonic() + 60
    while session in _replying and time.monotonic() < deadline:
        time.sleep(0.05)
    _shown.pop(session, None)
    return [], [], ""


# The conversation is kept in the browser (its localStorage, encrypted), so that a reload, a closed tab or a
# restart of the panel gives it back with the models it was held with. The key and the secret are fixed per
# workspace: gradio's defaults are new at each start, and what was kept could no longer be read.
SAVED_KEY = "qlora-studio-chat"


def browser_key() -> str:
    """This workspace's key for the browser's copy of the conversation, made once."""
    import os
    import secrets

    path = paths.home() / "browser.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        pass
    key = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key)
    try:  # whole or not at all, and never over a key another start made meanwhile
        os.link(tmp, path)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
    finally:
        tmp.unlink()
    return key


def _messages(history) -> list[dict]:
    """A chat pane's history as plain {role, content} messages (what is kept, and what is given back)."""
    if not isinstance(history, list):
        return []
    return [{"role": m["role"], "content": _text(m.get("content"))} for m in history
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")]


def keep(source_a, source_b, hist_a, hist_b, request: gr.Request = None) -> dict:
    """What the browser keeps of the conversation: the two models and their panes, as this page's replies left
    them on the server where the page's copy is an earlier state of them (a reply's last words cut)."""
    hist_a, hist_b = _as_shown(_session(request), [hist_a, hist_b])
    return {"source_a": source_a or "default", "source_b": source_b or "",
            "hist_a": _messages(hist_a), "hist_b": _messages(hist_b)}


def restore(saved, done: bool = False, request: gr.Request = None):
    """Once a page is loaded: the conversation the browser kept, with its models where they still exist (and
    `done` set, so that what is kept later is not given back again)."""
    if done:
        return gr.update(), gr.update(), gr.update(), gr.update(), True
    saved = saved if isinstance(saved, dict) else {}
    choices = sources(lang(request))
    there = {value for _, value in choices}
    a = saved.get("source_a") if saved.get("source_a") in there else "default"
    b = saved.get("source_b") if saved.get("source_b") in there else ""
    return (gr.update(choices=choices, value=a), gr.update(choices=[("—", "")] + choices, value=b),
            _messages(saved.get("hist_a")), _messages(saved.get("hist_b")), True)


def build() -> dict:
    """The Chat tab's widgets; registers the hook that frees chat models before training."""
    if release_for not in jobs.before_train:
        jobs.before_train.append(release_for)
    gr.Markdown(t("chat_intro"))
    choices = sources()  # relabelled on page load, in the reader's language
    with gr.Row():
        source_a = gr.Dropdown(choices, value="default", label=t("chat_model"), allow_custom_value=True, scale=3)
        source_b = gr.Dropdown([("—", "")] + choices, value="", label=t("compare_with"), allow_custom_value=True, scale=3)
        precision = widget(GenerationConfig, "precision", scale=2)
        refresh = gr.Button(t("refresh"), size="sm", scale=1)
    # With several GPUs, where each model goes: by default the GPU with the most free memory that no run uses.
    many = several()
    with gr.Row(visible=many):
        gpus_a = gr.Dropdown(gpu_choices() if many else [("", "")], value="", label=t("chat_gpu_a"),
                             info=t("chat_gpu_help"), allow_custom_value=True, visible=many, elem_id="chat-gpus-a")
        gpus_b = gr.Dropdown(gpu_choices() if many else [("", "")], value="", label=t("chat_gpu_b"),
                             info=t("chat_gpu_help"), allow_custom_value=True, visible=False, elem_id="chat-gpus-b")
    with gr.Row():
        # Plain text: a model's '#' lines are not headings, and its markup is shown as it wrote it.
        chat_a = gr.Chatbot(label=t("chat_a"), height=420, buttons=["copy"], render_markdown=False)
        chat_b = gr.Chatbot(label=t("chat_b"), height=420, visible=False, buttons=["copy"], render_markdown=False)
    with gr.Row():
        message = gr.Textbox(label=t("message"), lines=2, scale=6, submit_btn=False)
        with gr.Column(scale=1, min_width=120):
            send = gr.Button(t("send"), variant="primary")
            stop = gr.Button(t("stop_reply"), variant="stop")
            again = gr.Button(t("regenerate"))
            clear = gr.Button(t("clear"))
    fit_badge_html = gr.HTML(elem_id="fit-chat")  # does the model load in the free memory, before Send loads it
    note = gr.Markdown()
    with gr.Accordion(t("sampling"), open=False):
        system = widget(GenerationConfig, "system", lines=2)
        with gr.Row():
            temperature = widget(GenerationConfig, "temperature")
            top_p = widget(GenerationConfig, "top_p")
            top_k = widget(GenerationConfig, "top_k")
        with gr.Row():
            rep = widget(GenerationConfig, "repetition_penalty")
            max_new = widget(GenerationConfig, "max_new_tokens")
        unload_btn = gr.Button(t("release"), size="sm")
    clock = gr.Number(visible=False)  # the browser's time of a click (CLOCK)
    inputs = [message, chat_a, chat_b, source_a, source_b, system, precision, temperature, top_p, top_k, rep, max_new,
              gpus_a, gpus_b, clock]
    outputs = [message, chat_a, chat_b, note]
    stamped = CLOCK.format(n=len(inputs))
    saved = gr.BrowserState({}, storage_key=SAVED_KEY, secret=browser_key())
    kept = [source_a, source_b, chat_a, chat_b]
    # Send and Enter during a reply queue their message (gradio's default drops a click while its event runs, so a
    # second Send did nothing and said nothing); it waits for its turn, as Shift+Enter's does.
    sending = SENT.format(n=len(inputs))
    for sent in (send.click(respond, inputs, outputs, js=sending, api_name="chat", concurrency_id="gpu",
                            concurrency_limit=1, trigger_mode="multiple"),
                 message.submit(respond, inputs, outputs, js=sending, api_name=False, concurrency_id="gpu",
                                concurrency_limit=1, trigger_mode="multiple"),
                 again.click(regenerate, inputs, outputs, js=stamped, api_name="regenerate", concurrency_id="gpu",
                             concurrency_limit=1)):
        sent.then(keep, kept, saved, api_name=False, show_progress="hidden")
    # At once, outside the queue, where the reply being written holds the GPU's place.
    stop.click(stop_reply, clock, None, js=CLOCK.format(n=1), queue=False, api_name=False)
    clear.click(cleared, clock, [chat_a, chat_b, note], js=CLOCK.format(n=1), api_name="clear_chat",
                show_progress="hidden").then(keep, kept, saved, api_name=False, show_progress="hidden")
    for picker in (source_a, source_b):  # a model picked is kept too, before any message
        picker.input(keep, kept, saved, api_name=False, show_progress="hidden")
    # And the panes while a reply is written (the latest state, one keep at a time): a reload mid-reply gives back
    # the question and what was written of its answer, where it lost the whole exchange.
    for pane in (chat_a, chat_b):
        pane.change(keep, kept, saved, api_name=False, show_progress="hidden", trigger_mode="always_last")
    # The browser reads what it kept once the page is drawn, which can be after the page's load event: its change
    # gives the conversation back, then the panes are named after its models (each page once).
    restored = gr.State(False)
    saved.change(restore, [saved, restored], [*kept, restored], api_name=False, show_progress="hidden").then(
        relabel, [source_a, source_b], [source_a, source_b, chat_a, chat_b, gpus_a, gpus_b], api_name=False,
        show_progress="hidden")
    source_a.change(label_a, source_a, chat_a, api_name=False)
    source_b.change(label_b, source_b, chat_b, api_name=False)
    if many:  # the comparison model's GPU, once there is one
        source_b.change(lambda source: gr.update(visible=bool(source)), source_b, gpus_b, api_name=False)
    # Picking a model (or its GPU) loads it and warms it up now, with a progress line, so that no message waits.
    for picker in (source_a, source_b, precision, gpus_a, gpus_b):
        picker.change(prepare, [source_a, source_b, precision, gpus_a, gpus_b], note, api_name=False,
                      concurrency_id="gpu", concurrency_limit=1, show_progress="hidden")
    refresh.click(build_refresh, None, [source_a, source_b], api_name=False)
    unload_btn.click(unload, None, note, api_name=False)
    for trigger in (source_a, precision, gpus_a):
        trigger.change(fit_badge, [source_a, precision, gpus_a], fit_badge_html, api_name=False, show_progress="hidden")
    gr.Timer(5.0).tick(fit_badge, [source_a, precision, gpus_a], fit_badge_html, api_name=False, show_progress="hidden")
    return {"source_a": source_a, "source_b": source_b,
            "relabel": (relabel, [source_a, source_b], [source_a, source_b, chat_a, chat_b, gpus_a, gpus_b])}


def label_a(source: str, request: gr.Request = None):
    language = lang(request)
    return gr.update(label=pane_label(source, say("no_model", language), language))


def label_b(source: str, request: gr.Request = None):
    return gr.update(visible=bool(source), label=pane_label(source, "", lang(request)))


def build_refresh(request: gr.Request = None):
    """Fresh choices for both model pickers (after a merge or a new run), named in the reader's language."""
    choices = sources(lang(request))
    return gr.update(choices=choices), gr.update(choices=[("—", "")] + choices)


def relabel(source_a, source_b, request: gr.Request = None):
    """The pickers' choices and the panes' names again, in the language now chosen (the GPUs' with their free
    memory now)."""
    gpu = gr.update(choices=gpu_choices(lang(request))) if several() else gr.update()
    return (*build_refresh(request), label_a(source_a, request), label_b(source_b, request), gpu, gpu)
