"""Chatting with a model: a merged model, a base model with an adapter, or a plain base model.

The prompt is built with the template recorded when the model was trained (qlora_studio.json
in the adapter or merged folder), so chat shows the model exactly the text it learned from.
Replies stream: generation runs in a background thread and the growing text is yielded.
"""

from __future__ import annotations

import gc
import sys
import threading
import traceback
from collections.abc import Iterator

from core import models
from core.config import GenerationConfig, Parser, add_arguments
from core.errors import UserError
from core.logs import quiet
from core.template import Template


class Chat:
    """One loaded model and its template; `stream()` answers, `close()` frees the memory."""

    def __init__(self):
        self.model = self.tokenizer = self.template = None
        self.description = ""
        self.fitted: dict = {}

    def load(self, model: str | None = None, adapter: str | None = None, *, trust_remote_code: bool = False,
             precision: str = "auto") -> str:
        """Load a model folder (or the base recorded in `adapter`), with the adapter on top if given.

        On a GPU, `precision` "auto" loads in 16-bit where it fits, else 8-bit, else 4-bit (core.fit).
        """
        self.close()
        self.fitted = {}  # on a GPU: the precision chosen and the numbers behind it (core.fit)
        try:
            self.model, self.tokenizer, record, description = models.load_for_inference(
                model, adapter, trust_remote_code=trust_remote_code, precision=precision, fitted=self.fitted)
        except BaseException as e:
            # The half-loaded model lives on in the traceback's frames (out of memory halfway, say): clear
            # them, or its GPU memory stays taken for as long as anyone holds the exception.
            traceback.clear_frames(e.__traceback__)
            _free_memory()
            raise
        self.template = _template(record, self.tokenizer)
        self.description = f"{description} ({self.template.label} template)"
        return self.description

    def stream(self, history: list[tuple[str, str]], message: str, gen: GenerationConfig | None = None) -> Iterator[str]:
        """Yield the growing reply to `message` after `history` while the model writes it."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if self.model is None:
            raise UserError("chat: load a model first")
        gen = gen or GenerationConfig()
        gen.check()
        prompt = self.template.prompt(gen.system, history, message, self.tokenizer)
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300,
                                        clean_up_tokenization_spaces=False)
        cancel = threading.Event()

        class _Cancel(StoppingCriteria):  # lets a reader that walks away end generation early
            def __call__(self, input_ids, scores, **kw):
                return cancel.is_set()

        stops = [s for s in self.template.stop_strings(self.tokenizer) if s]
        sampling = gen.temperature > 0
        kwargs = dict(
            **inputs, streamer=streamer, max_new_tokens=gen.max_new_tokens, do_sample=sampling,
            repetition_penalty=gen.repetition_penalty, stopping_criteria=StoppingCriteriaList([_Cancel()]),
            eos_token_id=self._eos_ids(), pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=stops or None, tokenizer=self.tokenizer,
        )
        if sampling:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or None)
        else:  # greedy: the model's own sampling defaults would only cause warnings
            kwargs.update(temperature=None, top_p=None, top_k=None)
        failure: list[BaseException] = []

        def work():
            try:
                self.model.generate(**kwargs)
            except BaseException as e:  # shown to the reader instead of dying silently in the thread
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=work, name="generate", daemon=True)
        thread.start()
        text = ""
        try:
            for piece in streamer:
                text += piece
                cut = _cut(text, stops)
                if cut is not None:
                    yield cut
                    return
                yield text.lstrip()
        finally:
            cancel.set()
            thread.join()
        if failure:
            raise failure[0]

    def reply(self, history: list[tuple[str, str]], message: str, gen: GenerationConfig | None = None) -> str:
        """The whole reply at once."""
        out = ""
        for text in self.stream(history, message, gen):
            out = text
        return out

    def close(self) -> None:
        """Free the model's memory (GPU included)."""
        if self.model is None:
            return
        model, self.model, self.tokenizer = self.model, None, None
        # bitsandbytes' 8-bit layers keep their int8 weights and scales twice over, on the parameter
        # (weight.CB, weight.SCB) and in the layer's matmul state (state.CB, state.SCB): drop both, so
        # that nothing outliving the model (a reference cycle collected late, a hook) keeps them on the GPU.
        for module in model.modules():
            for holder in (getattr(module, "state", None), getattr(module, "weight", None)):
                for name in ("CB", "SCB", "CxB", "idx", "subB"):
                    if holder is not None and getattr(holder, name, None) is not None:
                        try:
                            setattr(holder, name, None)
                        except (AttributeError, TypeError):
                            pass
        del model
        _free_memory()

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
        return sorted(i for i in ids if i is not None)


def _free_memory() -> None:
    """Collect what nothing references any more, then give the GPU's cached blocks back to the driver."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _cut(text: str, stops: list[str]) -> str | None:
    """The reply before the first stop string, or None if no stop string appears yet."""
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)].strip() if hits else None



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
        raise UserError("chat: give --model (a model folder or 'default') or --adapter")
    gen = GenerationConfig.from_dict(args)
    quiet()
    chat = Chat()
    chat.load(model, adapter, trust_remote_code=trust, precision=gen.precision)
    shown = ""
    for text in chat.stream([], prompt, gen):
        if text.startswith(shown):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
        shown = text
    print()
    chat.close()
    return 0
