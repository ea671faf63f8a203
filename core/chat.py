"""Chatting with a model: a merged model, a base model with an adapter, or a plain base model.

The prompt is built with the template recorded when the model was trained (qlora_studio.json
in the adapter or merged folder), so chat shows the model exactly the text it learned from.
Replies stream: generation runs in a background thread and the growing text is yielded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator

from core import gpus, models
from core.config import GenerationConfig, Parser, add_arguments
from core.errors import UserError
from core.gpus import release_memory
from core.logs import quiet
from core.template import Template, reply_text

log = logging.getLogger(__name__)
UPDATES = 15  # times a second the growing reply is handed on, at most
# How a warmed-up model writes:
# - "replay" (core.decode.Replayed): a 16-bit model on one GPU; the model's own kernels replayed from CUDA graphs
#   with attention eager over the cache, so greedy replies are plain generate()'s token for token (101 tokens/s on
#   the 13B shape, docs/BENCHMARKS.md);
# - "loop" (core.decode.Decoder: one compiled step on a static cache, with the GPU queued several steps ahead of
#   the host; 110 tokens/s on the 13B shape in 16-bit against generate's 86, docs/BENCHMARKS.md): quantized
#   models, the CPU, and a 16-bit model whose replayed steps could not be recorded or checked;
# - "generate" (transformers' generate() on its compiled static cache), kept for a model spread over several GPUs.
DECODERS = ("generate", "loop", "replay")


class Chat:
    """One loaded model and its template; `stream()` answers, `close()` frees the memory."""

    def __init__(self):
        self.model = self.tokenizer = self.template = None
        self.description = ""
        self.fitted: dict = {}
        self.last: dict = {}  # the latest reply's token ids, time to first token and tokens/s
        self.compiled = 0  # on a GPU after warm-up: the static cache's length in tokens
        self.warmup_s: float | None = None
        self.fallback = ""  # why the fast path could not be set up, in one line
        self.replay_note = ""  # why a 16-bit model could not use the replayed steps (it uses "loop"), in one line
        self.side_operations = 0  # replayed steps: how many of their operations run side by side (core.overlap)
        self.phase, self.since = "", 0.0  # "loading" / "warming" while load() runs, for a progress line
        self.decoder = "loop"  # see DECODERS; load() picks it for the model (decoder_for)
        self._loop = None  # core.decode.Decoder once warmed up with decoder "loop"
        self._writing: Tokens | None = None  # the reply being written, if any
        self._jobs: queue.Queue | None = None
        self._worker: threading.Thread | None = None

    def load(self, model: str | None = None, adapter: str | None = None, *, trust_remote_code: bool = False,
             precision: str = "auto", compile: bool | None = None, decoder: str | None = None,
             gpus: list[int] | None = None) -> str:
        """Load a model folder (or the base recorded in `adapter`), with the adapter on top if given.

        On a GPU, `precision` "auto" loads in 16-bit where it fits, else 8-bit, else 4-bit (core.fit).
        `compile` (default: on a GPU) sets up a static cache and compiles the decoding step now,
        so that no reply pays for it (warm_up). `decoder`: "generate" or "loop" (default: decoder_for). `gpus` (torch's
        numbers): one GPU to load the model on, or two or more to spread it over (core.models.load_for_inference).
        """
        self.close()
        if decoder is not None and decoder not in DECODERS:
            raise ValueError(f"decoder: {decoder!r} is not one of {', '.join(DECODERS)}")
        self.fitted = {}  # on a GPU: the precision chosen and the numbers behind it (core.fit)
        self.fallback, self.replay_note, self.warmup_s, self.side_operations = "", "", None, 0
        self.phase, self.since = "loading", time.time()
        try:
            try:
                self.model, self.tokenizer, record, description = models.load_for_inference(
                    model, adapter, trust_remote_code=trust_remote_code, precision=precision, fitted=self.fitted,
                    gpus=gpus)
            except BaseException as e:
                # The half-loaded model lives on in the traceback's frames (out of memory halfway, say): clear
                # them, or its GPU memory stays taken for as long as anyone holds the exception.
                traceback.clear_frames(e.__traceback__)
                release_memory()
                raise
            self.template = _template(record, self.tokenizer)
            if self.model.device.type == "cuda":
                _attention_without_cudnn()
            best = decoder_for(self.model)
            self.decoder = decoder or best
            if self.decoder == "replay" and best != "replay":
                self.decoder, self.replay_note = "loop", "replayed steps need a 16-bit model on one GPU"
            self.description = f"{description} ({self.template.label} template)"
            if self.model.device.type == "cuda" if compile is None else compile:
                self.warm_up()
        finally:
            self.phase = ""
        return self.description

    def warm_up(self) -> float:
        """Compile generation with a static cache of fixed length, trying what changes between replies.

        Two prompt lengths, two reply lengths, greedy and sampling: afterwards none of these
        recompiles. A failure leaves the plain path and says why in `fallback`. Returns the seconds.
        """
        self.phase, self.since = "warming", time.time()
        start = time.perf_counter()
        self.compiled = cache_tokens(self.model)
        self._loop = None
        try:
            if self.decoder == "replay":
                from core.decode import Replayed

                for overlap in (True, False):  # independent kernels side by side where that keeps the bits
                    try:
                        self._loop = Replayed(self.model, self.compiled, overlap=overlap)
                        self._loop.check()
                        self.side_operations = self._loop.overlap.forks if overlap else 0
                        break
                    except Exception as e:  # a model whose step cannot be recorded: the compiled loop, which can
                        self._loop, note = None, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
                        log.info("replayed steps not used (overlap %s)", overlap, exc_info=True)
                        release_memory()  # what half-recorded graphs held
                if self._loop is None:
                    self.decoder, self.replay_note = "loop", note
            if self.decoder == "loop":
                from core.decode import Decoder

                self._loop = Decoder(self.model, self.compiled, compile=self.model.device.type == "cuda")
            # The compiler's own notes (TF32, an empty CUDA graph, deprecations inside the packages) go to the
            # log: a process that turns warnings into errors (python -W error, a test run) would otherwise lose
            # the fast path over a remark.
            on_gpu = self.model.device.type == "cuda"
            with warnings.catch_warnings(record=True) as noted, _compiled_attention(on_gpu and self.decoder != "replay"):
                warnings.simplefilter("always")
                for message, gen in WARM_UP:
                    self.reply([], message, gen)
            for note in {str(n.message): n for n in noted}.values():
                log.info("while compiling: %s: %s", note.category.__name__, note.message)
        except Exception as e:  # an unsupported model or a missing compiler: chat still works, slower
            self.compiled, self._loop = 0, None
            self.fallback = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
            log.info("chat runs without compilation", exc_info=True)  # the whole story, for the log
            _forget_compiled()
        self.warmup_s = time.perf_counter() - start
        return self.warmup_s

    def stream(self, history: list[tuple[str, str]], message: str, gen: GenerationConfig | None = None) -> Iterator[str]:
        """Yield the growing reply to `message` after `history` while the model writes it.

        The first words come out as soon as they exist, later ones at most UPDATES times a second
        (a page redrawn once per token costs more than the token). Each text extends the one
        before. stop() (the Stop button) or closing the generator (a reader that walks away) ends
        generation after the current token. `last` then holds the reply's token ids and speed.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        if self.model is None:
            raise UserError("chat: load a model first", zh="chat：请先加载模型")
        gen = gen or GenerationConfig()
        gen.check()
        tokens = Tokens()  # the clock of the first token starts here, before the prompt is built
        self._writing = tokens  # close() ends it
        prompt = self.template.prompt(gen.system, history, message, self.tokenizer)
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        stops = [s for s in self.template.stop_strings(self.tokenizer) if s]

        tail = max((len(s) for s in stops), default=0)  # a stop string spans at most this many tokens
        tokenizer = self.tokenizer

        class _Stop(StoppingCriteria):
            """The end of the turn (a stop string just written) or a reader that walked away.

            Reads the last few ids the streamer already holds: transformers' own stop_strings
            criterion spends 0.4-1.3 s preparing for the vocabulary on every call (CPU, measured).
            """

            def __call__(self, input_ids, scores, **kw):
                if tokens.cancel.is_set():
                    return True
                written = tokenizer.decode(tokens.ids[-tail:]) if tail and tokens.ids else ""
                return any(s in written for s in stops)

        options = self._options(gen)
        # Warmed up, and the prompt and the reply fit the static cache: the compiled path; else the plain one.
        fits = bool(self.compiled) and inputs["input_ids"].shape[1] + gen.max_new_tokens <= self.compiled
        self.last = {}
        if fits and self._loop is not None:
            self._submit(tokens.run, self._loop.reply, dict(input_ids=inputs["input_ids"], streamer=tokens,
                                                            stop=lambda: _Stop()(None, None), **options))
        else:
            kwargs = dict(**inputs, streamer=tokens, stopping_criteria=StoppingCriteriaList([_Stop()]), **options)
            if fits:
                kwargs.update(compiled_options(self.compiled))
            self._submit(tokens.run, self.model.generate, kwargs)
        shown, final = "", None
        try:
            while (ids := tokens.next(1 / UPDATES)) is not None:
                # The local tokenizer: close() may let go of the model's while the last tokens come in.
                text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                if any(s in text for s in stops):  # the model started the next turn: the reply is whole
                    final = reply_text(text, stops)
                    break
                growing = _settled(text, stops).strip()
                if growing != shown:
                    shown = growing
                    yield shown
        finally:
            tokens.cancel.set()
            tokens.finished.wait()
            if self._writing is tokens:
                self._writing = None
            self.last = tokens.summary()
            self.last["prompt_tokens"] = inputs["input_ids"].shape[1]
            # Of the prompt, the tokens the cache still held from the turn before (not read again).
            self.last["reused_tokens"] = self._loop.kept if fits and self._loop is not None else 0
        if tokens.failure:
            raise tokens.failure
        final = reply_text(text, stops) if final is None and tokens.ids else final or ""
        if final != shown:
            yield final

    def _options(self, gen: GenerationConfig) -> dict:
        """generate()'s sampling arguments (core.decode takes the same)."""
        sampling = gen.temperature > 0
        out = dict(max_new_tokens=gen.max_new_tokens, do_sample=sampling, repetition_penalty=gen.repetition_penalty,
                   eos_token_id=self._eos_ids(), pad_token_id=self.tokenizer.pad_token_id)
        if sampling:
            out.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or None)
        else:  # greedy: the model's own sampling defaults would only cause warnings
            out.update(temperature=None, top_p=None, top_k=None)
        return out

    def forget(self) -> None:
        """The next reply reads its whole prompt again, as a new conversation's first reply does (the loop
        decoder otherwise keeps what the cache holds of the last prompt and reply: core.decode)."""
        if self._loop is not None:
            self._loop.forget()

    def reply(self, history: list[tuple[str, str]], message: str, gen: GenerationConfig | None = None) -> str:
        """The whole reply at once."""
        out = ""
        for text in self.stream(history, message, gen):
            out = text
        return out

    def stop(self) -> bool:
        """End the reply being written after its current token: its stream then ends as a whole reply does, with
        the text written so far and its speed in `last`. False if no reply was being written."""
        writing = self._writing
        if writing is None:
            return False
        writing.cancel.set()
        return True

    def close(self) -> None:
        """Free the model's memory (GPU included)."""
        self.stop()  # a reply being written ends after its current token (Unload mid-reply)
        if self._jobs is not None:
            self._jobs.put(None)  # the worker thread ends after the reply it is writing
            self._jobs = None
            # Waited for: a thread still inside torch when the interpreter exits aborts the process.
            self._worker.join(timeout=60)
        self._loop = None  # its cache and compiled step hold the model
        if self.model is None:
            return
        model, self.model, self.tokenizer = self.model, None, None
        release(model)
        del model
        self.compiled = 0
        release_memory()

    def _submit(self, fn, *args) -> None:
        """Run `fn` on this chat's own generation thread.

        One long-lived thread rather than one per reply: compiled CUDA graphs belong to the thread
        that recorded them, and the warm-up must serve every later reply.
        """
        if self._jobs is None:
            self._jobs = queue.Queue()
            device = self.model.device if self.model.device.type == "cuda" else None
            self._worker = threading.Thread(target=_serve, args=(self._jobs, device), name="generate", daemon=True)
            self._worker.start()
        self._jobs.put((fn, args))

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
        return sorted(i for i in ids if i is not None)


def release(model) -> None:
    """Empty a model that is done with, so that its memory comes back even if something still references it.

    A model closed on the GPU kept 12.9 GiB (an 8-bit 13B) there while nothing in this module held it: a
    reference that outlives the model (a cycle collected late, a hook, a compiled graph's guards) keeps
    every weight. So the weights go rather than waiting for the last reference: every parameter and buffer
    gets an empty storage; bitsandbytes' 8-bit copies of the int8 weights and scales (on the parameter and
    in the layer's matmul state) and its 4-bit scales are dropped. (The static cache that compiled generation
    keeps on the model is transformers' own, with no public way to drop it: it goes with the model.)
    """
    import torch

    for module in model.modules():
        for holder in (getattr(module, "state", None), getattr(module, "weight", None)):
            if holder is None:
                continue
            # vars(): bitsandbytes answers some old names (CxB) through __getattr__ with a deprecation warning
            for name in ("CB", "SCB", "idx", "subB", "quant_state"):
                if vars(holder).get(name) is not None:
                    try:
                        setattr(holder, name, None)
                    except (AttributeError, TypeError):
                        pass
    for tensor in [*model.parameters(), *model.buffers()]:
        try:
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        except (RuntimeError, TypeError):  # a tensor subclass that refuses new storage keeps it
            pass


def _attention_without_cudnn() -> None:
    """Keep torch's attention off cuDNN's kernels in this process (the chat's; training runs in a process of its own).

    torch 2.11 sends a one-token query on an H200 to cuDNN, which builds a plan for every new length of the cache,
    55-67 ms each: a reply at lengths the process had not met yet ran at 15 tokens/s where the same reply again ran
    at 88, and plain generate() at 11.5 against 28.7. cuDNN's kernels also gave plain generate() other tokens in
    its second run on the same prompt (a random 13B shape). Without them torch picks its flash kernel: as fast the
    first time as the second, and the same tokens every time (docs/BENCHMARKS.md).
    """
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


@contextlib.contextmanager
def _compiled_attention(cudnn: bool):
    """cuDNN's attention kernels on while a compiled step is compiled (the loop's, generate()'s static cache).

    The compiler picks the attention kernel once, when it compiles, for the static cache's one fixed length: there
    cuDNN's plan is built once, and its kernel ran the 13B shape's compiled loop at 111 tokens/s, where torch's
    kernel for a masked query over the whole 4096-token cache gave 66 (docs/BENCHMARKS.md). Eager attention after
    warm-up (prompts, the replayed steps, plain generate()) stays off cuDNN (_attention_without_cudnn).
    """
    import torch

    if not cudnn:
        yield
        return
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def _forget_compiled() -> None:
    """Drop what a failed compilation left behind (graphs, half-recorded CUDA graphs): the next model starts clean."""
    try:
        import torch

        torch.compiler.reset()
    except Exception:  # pragma: no cover - nothing compiled, nothing to drop
        pass


class Tokens:
    """A streamer for generate(): the reply's token ids as they come, and when they came."""

    def __init__(self):
        self.ids: list[int] = []
        self.cancel, self.finished = threading.Event(), threading.Event()
        self.failure: BaseException | None = None
        self._prompt_seen = False
        self._changed = threading.Condition()
        self._read, self._handed = 0, 0.0
        self._started = time.perf_counter()
        self._first = self._latest = None

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() hands over the prompt first
            self._prompt_seen = True
            return
        now = time.perf_counter()
        with self._changed:
            self.ids.extend(value.reshape(-1).tolist())
            self._first = self._first or now
            self._latest = now
            self._changed.notify()

    def end(self) -> None:
        with self._changed:
            self.finished.set()
            self._changed.notify()

    def run(self, generate, kwargs: dict) -> None:
        try:
            generate(**kwargs)
        except BaseException as e:  # shown to the reader instead of dying silently in the thread
            self.failure = e
        finally:
            self.end()

    def next(self, interval: float) -> list[int] | None:
        """All ids so far once some are new and `interval` seconds passed since the last call; None at the end."""
        with self._changed:
            while True:
                fresh = len(self.ids) > self._read
                wait = self._handed + interval - time.perf_counter()
                if self.finished.is_set() or (fresh and wait <= 0):
                    break
                self._changed.wait(timeout=wait if fresh else None)
            if not fresh:
                return None
            self._read, self._handed = len(self.ids), time.perf_counter()
            return list(self.ids)

    def summary(self) -> dict:
        """Token ids, seconds to the first token, and tokens per second after it."""
        n = len(self.ids)
        span = (self._latest - self._first) if n > 1 else 0.0
        return {"ids": list(self.ids), "tokens": n,
                "first_token_s": None if self._first is None else self._first - self._started,
                "tokens_per_s": (n - 1) / span if span > 0 else None}


def _serve(jobs: queue.Queue, device=None) -> None:
    if device is not None:  # the model's GPU is this thread's own (GPU 0 otherwise): graphs and streams go there
        import torch

        torch.cuda.set_device(device)
    _graphs_in_this_thread()
    while (job := jobs.get()) is not None:
        fn, args = job
        fn(*args)


def _graphs_in_this_thread() -> None:
    """Let this thread record and replay CUDA graphs (torch.compile's "reduce-overhead").

    torch keeps its CUDA graph trees in per-thread state that it sets up only in the thread that first
    imports them; before torch 2.13 any other Python thread fails its first graph with a bare
    AssertionError (pytorch issue 123177, fixed upstream by setting the state up lazily). Each chat
    writes on a thread of its own, so the second model loaded in a process (or the second pane of a
    side-by-side comparison) lost its compiled path: measured on an H200 with torch 2.11. This sets the
    state up here the way the fix does; where torch already does it, or has no such state, it does nothing.
    """
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    if trees is None:  # not imported yet: the first compile imports it in this thread, which sets the state up
        return
    try:
        import torch

        if hasattr(trees.local, "tree_manager_containers") or torch._C._is_key_in_tls("tree_manager_containers"):
            return  # this thread has it already
        from collections import defaultdict

        trees.local.tree_manager_containers = {}
        trees.local.tree_manager_locks = defaultdict(threading.Lock)
        torch._C._stash_obj_in_tls("tree_manager_containers", trees.local.tree_manager_containers)
        torch._C._stash_obj_in_tls("tree_manager_locks", trees.local.tree_manager_locks)
    except Exception:  # another torch: its own way, or none needed; warm-up still falls back in words
        log.debug("CUDA graph state for the chat thread not set up", exc_info=True)


def decoder_for(model) -> str:
    """The decoder for a loaded model (DECODERS): "generate" where the model is spread over several GPUs (one
    compiled step would span devices, and CUDA graphs hold one device each), "replay" for a 16-bit model on a GPU,
    else "loop"."""
    places = set((getattr(model, "hf_device_map", None) or {}).values()) - {"cpu", "disk"}
    if len(places) > 1:
        return "generate"
    device = getattr(getattr(model, "device", None), "type", None)
    inner = models.unwrapped(model)
    quantized = getattr(inner, "hf_quantizer", None) is not None or getattr(inner, "is_quantized", False)
    return "replay" if device == "cuda" and not quantized else "loop"


def gpu_room() -> int | None:
    """Bytes free on the jobs' GPU, read through NVML (asking torch would start a CUDA context on a GPU a run
    trains on); None on a machine without a GPU."""
    from core import fit

    return fit.machine()["gpu"]


def cache_tokens(model) -> int:
    """The static cache's fixed length: the context core.fit sizes memory for, or the model's own limit."""
    from core.fit import CONTEXT

    return min(CONTEXT, getattr(model.config, "max_position_embeddings", None) or CONTEXT)


def compiled_options(tokens: int) -> dict:
    """generate() arguments for a static cache of `tokens` and the compiled decoding step.

    The cache keeps its length whatever the prompt or the reply, so the compiled step never
    sees a new shape; sampling happens outside it.
    """
    from transformers import CompileConfig

    return dict(cache_implementation="static", max_cache_len=tokens, compile_config=CompileConfig())


# Replies that differ in every way later replies do, so that warm-up meets each shape once.
WARM_UP = (
    ("Hello.", GenerationConfig(temperature=0, max_new_tokens=12, repetition_penalty=1.0)),
    ("Write two sentences about the sea, the wind and the light over the water.",
     GenerationConfig(temperature=0.7, max_new_tokens=20)),
    ("Hi.", GenerationConfig(temperature=0, max_new_tokens=8)),
)


def _settled(text: str, stops: list[str]) -> str:
    """The text without an unfinished character or the start of a stop string at its end: both may still change."""
    text = text.rstrip("\ufffd")
    keep = len(text)
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                keep = min(keep, len(text) - k)
                break
    return text[:keep]


def _template(record: dict, tokenizer) -> Template:
    """The template the model was trained with; else the model's own chat template; else the seed."""
    if record.get("template"):
        return Template.from_dict(record["template"])
    if getattr(tokenizer, "chat_template", None):
        return Template("chat", "")
    return Template()



def cli(argv: list[str]) -> int:
    """`python -m core chat --model DIR [--adapter DIR] --prompt TEXT [generation flags]`: print the reply."""
    parser = Parser(prog="python -m core chat", description="Chat with a model, a merged model or base + adapter.")
    parser.add_argument("--model", default=None, help="Model folder, 'default', or empty with --adapter (its base).")
    parser.add_argument("--adapter", default=None, help="A run's adapter folder to put on the model.")
    parser.add_argument("--prompt", required=True, help="The message to answer.")
    parser.add_argument("--trust-remote-code", action="store_true", help="Run code shipped with the model.")
    add_arguments(parser, GenerationConfig)
    args = vars(parser.parse_args(argv))
    model, adapter, prompt, trust = (args.pop(k) for k in ("model", "adapter", "prompt", "trust_remote_code"))
    if not model and not adapter:
        raise UserError("chat: give --model (a model folder or 'default') or --adapter",
                        zh="chat：请给出 --model（模型文件夹或 'default'）或 --adapter")
    gen = GenerationConfig.from_dict(args)
    quiet()
    # The chosen GPUs alone, numbered from 0 in the panel's order (before torch starts CUDA); several: the
    # model is spread over them.
    picked = gpus.parse(gen.gpus)
    if picked:
        os.environ.update(gpus.narrow(dict(os.environ), picked))
    chat = Chat()
    chat.load(model, adapter, trust_remote_code=trust, precision=gen.precision,
              gpus=list(range(len(picked))) if len(picked) > 1 else None)
    print(f"model: {chat.description}", file=sys.stderr)  # which precision and why, and on which GPUs
    if chat.fallback:
        print(f"note: chat runs without compilation ({chat.fallback})", file=sys.stderr)
    shown = ""
    for text in chat.stream([], prompt, gen):
        if text.startswith(shown):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
        shown = text
    print()
    chat.close()
    return 0
