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

`Replayed` is the same loop with another step, for a 16-bit model on one GPU: the model's own kernels
recorded as CUDA graphs between its attention calls (independent kernels side by side: core.overlap), attention
eager over the tokens written. Its greedy replies are plain `generate()`'s token for token, which a compiled step's
fused kernels are not.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable

from core.models import unwrapped

AHEAD = 8  # steps queued before their tokens are read back: 15-20 reads a second at 120-160 tokens/s


class Decoder:
    """One model's static cache and its compiled decoding step; `reply()` writes one reply into a streamer."""

    def __init__(self, model, cache_tokens: int, compile: bool):
        import torch
        from transformers import StaticCache

        self.model = model
        self.tokens = cache_tokens
        self.cache = StaticCache(config=model.config, max_cache_len=cache_tokens)
        inner = unwrapped(model)
        self.cache_arg = _cache_arg(inner)
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
        n = input_ids.shape[1]
        written = torch.empty((1, n + max_new_tokens), dtype=torch.long, device=input_ids.device)
        written[:, :n] = input_ids
        ends = set(eos_token_id)
        streamer.put(input_ids.cpu())  # the prompt first, as generate() does
        with torch.no_grad():
            logits = self._begin(input_ids)
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
                logits = None  # the last step's output: the next step may write its memory again
                logits = self._next(written[:, n + i: n + i + 1], n + i)
                fed += 1

    def _begin(self, input_ids):
        """The prompt into the cache (what it holds of it already is kept), and the logits after its last token."""
        import torch

        n = input_ids.shape[1]
        # What the cache holds of this prompt already (an earlier turn's prompt and reply), short of its last
        # token: the prompt pass must still give the next token's logits.
        keep = min(_shared(self.held, input_ids[0].tolist()), n - 1)
        self.held, self.kept = [], 0  # unknown until this reply ends well
        if keep > 0 and self._rewind(keep):
            self.kept = keep
        else:
            self.cache.reset()
        # The prompt in one pass, the plain way (its length changes every time), then one token a step.
        return self.model(input_ids=input_ids[:, self.kept:], use_cache=True, logits_to_keep=1,
                          position_ids=torch.arange(self.kept, n, device=input_ids.device)[None],
                          **{self.cache_arg: self.cache}).logits[:, -1, :]

    def _next(self, token, position: int):
        """The logits after `token` (a [1, 1] slice of the reply's ids) at `position`; the cache takes it."""
        import torch

        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        # A fresh [1, 1] tensor: a slice carries its row's length in its stride, and the compiled step would
        # compile again for every prompt and reply length.
        return self.step(token.clone(memory_format=torch.contiguous_format),
                         torch.full((1,), position, dtype=torch.long, device=token.device))


class Replayed(Decoder):
    """A step that replays the model's own kernels from CUDA graphs, with attention run as `generate()` runs it.

    Every kernel of a decoding step except attention does the same work whatever the reply's length: the
    embedding, the norms, the projections, the rotary embedding, the MLP, the head. Those are recorded once,
    as one CUDA graph from each layer's attention to the next (the model's own forward, run once while
    recording), and replayed; each graph also writes the token's keys and values into the layer's place in a
    cache of `cache_tokens` tokens. Between two graphs, attention runs eagerly over exactly the tokens
    written, with the function and arguments the model's own code uses. So each step launches the kernels
    that plain `generate()` launches, on the same values, and gives its logits bit for bit (checked at
    warm-up: `check()`), without the host's time for each kernel, which holds plain `generate()` to a third
    of this speed on a 13B (docs/BENCHMARKS.md). With `overlap`, kernels that do not depend on each other
    run side by side in the graphs (core.overlap).

    The prompt pass is the model's plain forward on a dynamic cache, on the whole prompt each time (a cache
    cut to an earlier turn would give the same tokens only up to rounding); its keys and values are then
    copied into place.
    """

    def __init__(self, model, cache_tokens: int, overlap: bool = True):
        import torch

        from core import overlap as sides

        inner = unwrapped(model)
        self.model, self.config, self.tokens, self.compiled = model, inner.config, cache_tokens, False
        self.cache_arg = _cache_arg(inner)
        self.held, self.kept = [], 0  # nothing is kept between replies (the whole prompt is read each time)
        device = model.device
        self.ids = torch.zeros((1, 1), dtype=torch.long, device=device)  # the step's token and position, in
        self.position = torch.zeros((1, 1), dtype=torch.long, device=device)  # place for the graphs to read
        self.graphs: list = []
        self.layers: list[tuple] = []  # per attention call: (module, query, keys, values, output, arguments)
        self.kv: dict = {}  # attention module -> its cache: keys and values, [1, heads, cache_tokens, size] each
        self.overlap = sides.mode() if overlap else None
        self._record()

    def _record(self) -> None:
        import torch
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attend = ALL_ATTENTION_FUNCTIONS["sdpa"]
        me = threading.get_ident()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(device=self.model.device)
        slot = self.position.view(1)

        def begin():
            self.graphs.append(torch.cuda.CUDAGraph())
            self.graphs[-1].capture_begin(pool=pool, capture_error_mode="thread_local")
            if self.overlap is not None:
                self.overlap.begin()

        def end():
            if self.overlap is not None:
                self.overlap.join()
            self.graphs[-1].capture_end()

        def split(module, query, key, value, mask, **kwargs):
            if threading.get_ident() != me:  # another model's attention, in another thread
                return attend(module, query, key, value, mask, **kwargs)
            if not torch.cuda.is_current_stream_capturing():  # a run before recording: the cache's place made
                if module not in self.kv:
                    shape = (key.shape[0], key.shape[1], self.tokens, key.shape[3])
                    self.kv[module] = (torch.zeros(shape, dtype=key.dtype, device=key.device),
                                       torch.zeros(shape, dtype=value.dtype, device=value.device))
                return attend(module, query, key, value, mask, **kwargs)
            keys, values = self.kv[module]
            keys.index_copy_(2, slot, key)  # the token's keys and values at its place, in the graph
            values.index_copy_(2, slot, value)
            end()
            # The output's place, outside the graphs' pool: written between two replays, read by the next one.
            out = torch.empty((query.shape[0], query.shape[2], query.shape[1], value.shape[-1]), dtype=query.dtype,
                              device=query.device)
            self.layers.append((module, query, keys, values, out, kwargs))
            begin()
            return out, None

        ALL_ATTENTION_FUNCTIONS["sdpa"] = split
        self.attend = attend
        try:
            with torch.no_grad():
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):  # cuBLAS and the allocator set up before recording, as CUDA graphs need
                        self._forward()
                    torch.cuda.synchronize()
                    begin()
                    try:
                        if self.overlap is not None:
                            with self.overlap:
                                self.logits = self._forward()
                        else:
                            self.logits = self._forward()
                    finally:
                        end()
                torch.cuda.current_stream().wait_stream(stream)
        finally:
            del ALL_ATTENTION_FUNCTIONS["sdpa"]  # the library's own again
        if not self.layers:  # the model's attention is not sdpa (eager, flash): nothing to split the step at
            raise ValueError("no sdpa attention call to split the step at")

    def _forward(self):
        """One step of the model's own forward on the token and position in place; its logits, [1, vocab]."""
        # No cache: each layer's attention gets this token's keys and values (the split above puts the cache in).
        return self.model(input_ids=self.ids, position_ids=self.position, use_cache=False).logits[:, -1, :]

    def _begin(self, input_ids):
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        n = input_ids.shape[1]
        logits = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                            position_ids=torch.arange(n, device=input_ids.device)[None],
                            **{self.cache_arg: cache}).logits[:, -1, :]
        held = list(cache.layers)
        if len(held) != len(self.layers):
            raise ValueError(f"the prompt pass cached {len(held)} layers, the recorded step has {len(self.layers)}")
        for (_, _, keys, values, _, _), layer in zip(self.layers, held, strict=True):
            keys[:, :, :n].copy_(layer.keys)
            values[:, :, :n].copy_(layer.values)
        return logits

    def _next(self, token, position: int):
        self.ids.copy_(token)
        self.position.fill_(position)
        graphs, attend, n = self.graphs, self.attend, position + 1
        for i, (module, query, keys, values, out, kwargs) in enumerate(self.layers):
            graphs[i].replay()
            # No mask: what transformers makes for one query with no padding, for sdpa.
            out.copy_(attend(module, query, keys[:, :, :n], values[:, :, :n], None, **kwargs)[0])
        graphs[-1].replay()
        return self.logits

    def _rewind(self, keep: int) -> bool:
        return False

    def forget(self) -> None:
        pass

    def check(self, steps: int = 3) -> None:
        """Raise unless replayed steps give the logits of the model's plain forward bit for bit.

        The plain forward runs twice: where its two runs differ from each other (a GPU whose kernels do not give
        the same bits twice: measured on a random 13B shape, docs/BENCHMARKS.md) no path can be held to its bits,
        and only a difference the plain forward does not show too counts.
        """
        import torch
        from transformers import DynamicCache

        prompt = torch.arange(3, 3 + 12, device=self.ids.device)[None] % self.config.vocab_size
        plain = [DynamicCache(config=self.config) for _ in range(2)]
        with torch.no_grad():
            want = [self.model(input_ids=prompt, use_cache=True, **{self.cache_arg: c}).logits[:, -1, :] for c in plain]
            got = self._begin(prompt)
            for k in range(steps):
                token = want[0].argmax(-1, keepdim=True)
                position = prompt.shape[1] + k
                at = torch.tensor([[position]], device=token.device)
                want = [self.model(input_ids=token, use_cache=True, position_ids=at, **{self.cache_arg: c}).logits[:, -1, :]
                        for c in plain]
                got = self._next(token, position)
                if not torch.equal(got, want[0]) and torch.equal(want[0], want[1]):
                    raise ValueError(f"replayed step {k + 1} differs from the plain forward by "
                                     f"{float((got.float() - want[0].float()).abs().max()):.3g}")


def _cache_arg(model) -> str:
    """The name this transformers reads the cache under (it was renamed `cache`, past_key_values deprecated)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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
