"""Writing a reply token by token on a fixed-length cache, with the GPU never waiting for the host.

`generate()` hands each new token to its stopping criteria and its streamer before it queues the
next step, and reading a token on the host waits for the GPU to finish it. So every step the GPU
idles while Python prepares the next one: with a compiled step of a 13B taking about 6 ms on an
H200, the host's few milliseconds a step were a third of the time (81-88 tokens/s measured in the
panel's path, against about 185 that reading every weight once a step allows).

Here the host queues `AHEAD` steps before it looks at their tokens: each step's token stays on the
GPU and feeds the next step there. The tokens come back to the host once per batch (the first one
at once, for the time to the first token), where the end of the turn, a stop string and Stop are
checked. A reply that ends inside a batch keeps the tokens up to its end and drops the rest, so the
reply is the one `generate()` writes: greedy decoding gives exactly its tokens (tests/test_chat.py).

A conversation's earlier turns are not read again: the cache still holds the keys and values of the
last reply's prompt and of the tokens written after it, and the next prompt (the same history, the reply,
a new message) shares their beginning. Only the tokens after the shared part go through the prompt pass,
so the first token of a later turn comes after its new message alone, not the whole history.

The decoding step (one token in, the next token's logits out) is the only compiled part: inductor
with CUDA graphs ("reduce-overhead") on a static cache whose shapes never change, so it compiles
once at warm-up. Choosing the token (repetition penalty, temperature, top-k, top-p, sampling) uses
transformers' own logits processors, on the GPU, outside the graph.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

AHEAD = 8  # steps queued before their tokens are read back: 15-20 reads a second at 120-160 tokens/s


class Decoder:
    """One model's static cache and its compiled decoding step; `reply()` writes one reply into a streamer."""

    def __init__(self, model, cache_tokens: int, compile: bool):
        import torch
        from transformers import StaticCache

        self.model = model
        self.tokens = cache_tokens
        self.cache = StaticCache(config=model.config, max_cache_len=cache_tokens)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        # The cache's argument was renamed (`cache`, past_key_values deprecated): the name this transformers reads.
        self.cache_arg = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
        # What transformers says cannot compile (bitsandbytes' layers) runs its steps as they are.
        quantizer = getattr(inner, "hf_quantizer", None)
        self.compiled = compile and getattr(quantizer, "is_compileable", True)
        self.step = torch.compile(self._step, mode="reduce-overhead", dynamic=False) if self.compiled else self._step
        self.held: list[int] = []  # the token ids whose keys and values the cache holds, in order
        self.kept = 0  # of the last reply's prompt, the tokens the cache already held (not read again)

    def forget(self) -> None:
        """The next reply reads its whole prompt (what a new conversation does; for measuring a cold start)."""
        self.held = []

    def _rewind(self, keep: int) -> bool:
        """Let the cache hold only its first `keep` tokens; False where this transformers' cache cannot say so.

        A static cache layer counts its tokens in a tensor that the compiled step adds to in place (its address
        is fixed for the CUDA graph): setting it is what cropping a static cache does. The entries past it are
        written again before any query can see them (attention is causal over positions). Only plain layers: a
        sliding window's has rolled over what it dropped, and other kinds keep state that cannot go back.
        """
        import torch
        from transformers.cache_utils import StaticLayer

        layers = getattr(self.cache, "layers", None) or []
        if not layers or any(type(x) is not StaticLayer or not isinstance(getattr(x, "cumulative_length", None),
                                                                           torch.Tensor) for x in layers):
            return False
        for layer in layers:
            layer.cumulative_length.fill_(keep)
        return True

    def _step(self, token, position):
        """The logits after `token` (shape [1, 1]) at `position` (shape [1]); the cache takes the token's keys and values."""
        # The static cache counts the tokens it holds and writes at the next place itself.
        out = self.model(input_ids=token, position_ids=position[None], use_cache=True, **{self.cache_arg: self.cache})
        return out.logits[:, -1, :]

    def reply(self, input_ids, *, max_new_tokens: int, do_sample: bool, eos_token_id: list[int], streamer,
              stop: Callable[[], bool], temperature: float | None = None, top_p: float | None = None,
              top_k: int | None = None, repetition_penalty: float = 1.0, **_ignored) -> None:
        """Write up to `max_new_tokens` after `input_ids` (one row) into `streamer` (put/end, as generate() does).

        `stop()` is asked after each batch of tokens reaches the streamer: True ends the reply there.
        """
        import torch

        if input_ids.shape[1] + max_new_tokens > self.tokens:
            raise ValueError(f"{input_ids.shape[1]} + {max_new_tokens} tokens do not fit the {self.tokens}-token cache")
        if do_sample:  # what generate() takes from the model's own generation config when a setting is left out
            own = self.model.generation_config
            temperature = own.temperature if temperature is None else temperature
            top_p = own.top_p if top_p is None else top_p
            top_k = own.top_k if top_k is None else top_k
        choose = _chooser(do_sample, temperature, top_p, top_k, repetition_penalty)
        device = input_ids.device
        n = input_ids.shape[1]
        written = torch.empty((1, n + max_new_tokens), dtype=torch.long, device=device)
        written[:, :n] = input_ids
        ends = set(eos_token_id)
        streamer.put(input_ids.cpu())  # the prompt first, as generate() does
        prompt = input_ids[0].tolist()
        # What the cache holds of this prompt already (an earlier turn's prompt and reply), short of its last
        # token: the prompt pass must still give the next token's logits.
        keep = min(_shared(self.held, prompt), n - 1)
        self.held, self.kept = [], 0  # unknown until this reply ends well
        if keep > 0 and self._rewind(keep):
            self.kept = keep
        else:
            self.cache.reset()
        with torch.no_grad():
            # The prompt in one pass, the plain way (its length changes every time), then one token a step.
            logits = self.model(input_ids=input_ids[:, self.kept:], use_cache=True, logits_to_keep=1,
                                position_ids=torch.arange(self.kept, n, device=device)[None],
                                **{self.cache_arg: self.cache}).logits[:, -1, :]
            fed = n  # tokens whose keys and values are in the cache
            read = 0  # tokens already handed to the streamer
            for i in range(max_new_tokens):
                token = choose(written[:, : n + i], logits.float())
                written[:, n + i] = token
                made = i + 1
                if made == 1 or made - read >= AHEAD or made == max_new_tokens:
                    batch = written[0, n + read: n + made].tolist()  # waits for the GPU: once a batch
                    end = next((k + 1 for k, t in enumerate(batch) if t in ends), None)
                    streamer.put(torch.tensor(batch[:end]))
                    read = made
                    if end is not None or made == max_new_tokens or stop():
                        self.held = written[0, :fed].tolist()
                        return
                position = torch.full((1,), n + i, dtype=torch.long, device=device)
                logits = None  # the last step's output: its CUDA graph's memory is written again by the next step
                if self.compiled:
                    torch.compiler.cudagraph_mark_step_begin()
                # A fresh [1, 1] tensor: a slice of `written` carries its row's length in its stride, and the
                # compiled step would compile again for every prompt and reply length.
                logits = self.step(written[:, n + i: n + i + 1].clone(memory_format=torch.contiguous_format), position)
                fed += 1


def _shared(a: list[int], b: list[int]) -> int:
    """How many tokens `a` and `b` share from their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _chooser(do_sample: bool, temperature, top_p, top_k, repetition_penalty) -> Callable:
    """The next token from the logits, as generate() picks it with these settings: greedy or sampled."""
    import torch
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    steps = LogitsProcessorList()
    if repetition_penalty and repetition_penalty != 1.0:
        steps.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
    if do_sample:  # the order generate() applies them in
        if temperature is not None and temperature != 1.0:
            steps.append(TemperatureLogitsWarper(temperature))
        if top_k:
            steps.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
        if top_p is not None and top_p < 1.0:
            steps.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))

    def choose(seen, logits):
        scores = steps(seen, logits)
        if do_sample:
            return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        return torch.argmax(scores, dim=-1)

    return choose
