"""The recomputation of the backward pass: knowing when it runs, and skipping the frozen products it already has.

With gradient checkpointing, torch's checkpoint keeps only each decoder layer's input and, in the backward pass,
runs the layer's forward pass again to get back what the layer's backward needs. In a QLoRA step most of that
second pass is the frozen base layers' products (on the 13B shape, about 160 of a step's 590 TFLOP), and their
outputs are the same numbers both times.

`RECOMPUTE` is the checkpoint's `context_fn`: while a layer is recomputed, `active()` is true (core.fp8's mode
"backward" multiplies in FP8 then).

`Stash` keeps the outputs of the frozen linear layers inside the checkpointed decoder layers: in the forward pass
each output is copied to pinned CPU memory on a side stream, and when the recomputation calls that layer again the
kept output comes back instead of a new product, copied in ahead of need (the layer recomputed next is brought
back while this one runs). What it keeps is bounded three ways, and whatever is not kept is recomputed as before:

  - pinned CPU memory: a budget reserved chunk by chunk in a background thread (`Pinned`), so start-up never waits
    for it; until the chunks exist, nothing is kept;
  - the bus: when the copies out fall more than `lag` bytes behind the math, an output is not kept, so the GPU
    memory they hold stays bounded;
  - usefulness: an output the recomputation never asked for (torch stops recomputing after the last tensor the
    backward pass needs, before a layer's last product) is not kept again.

An output changed in place before its copy was read is not used. Enter the stash around one forward and backward
pass (one micro-batch), as the offloading is (core/offload.py). Written for CUDA; on "cpu" the copies are plain
copies, which is how the CPU tests check the bookkeeping.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import threading
import weakref
from collections import deque
from dataclasses import dataclass

import torch

from core import logs
from core.fit import STASH_KEEP, STASH_LAG

log = logging.getLogger("qlora_studio.train")
REPORT_AT = 3  # the micro-batch whose numbers the log reports (the pinned memory has had time to be reserved)

# ---- when the checkpoint recomputes --------------------------------------------------------------------------

_depth = 0


@contextlib.contextmanager
def _recomputing():
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def active() -> bool:
    """True while torch's checkpoint (given RECOMPUTE as its context_fn) recomputes a layer's forward pass."""
    return _depth > 0


class Recompute(str):
    """torch.utils.checkpoint's `context_fn`: nothing around the first forward pass, `active()` around the
    recomputation. A str, so that the training arguments that carry it to the checkpoint still turn into JSON
    (wandb's and tensorboard's record of the run)."""

    def __call__(self):
        return contextlib.nullcontext(), _recomputing()


RECOMPUTE = Recompute("recompute")

# ---- pinned CPU memory, reserved chunk by chunk -----------------------------------------------------------------

CHUNK = 256 << 20
ALIGN = 256


class Pinned:
    """Up to `budget` bytes of pinned CPU memory, reserved in chunks by a background thread; handed out front to
    back and reset for every micro-batch. `take` never waits and never allocates: no room is None."""

    def __init__(self, budget: int, *, chunk: int = CHUNK, pin: bool = True):
        self.budget, self.chunk, self.pin = budget, chunk, pin
        self.chunks: list[torch.Tensor] = []
        self.index = self.offset = 0
        self.stopped = False
        self._thread = None
        if budget >= ALIGN:
            self._thread = threading.Thread(target=self._reserve, name="pin-stash", daemon=True)
            self._thread.start()
            atexit.register(_stop, weakref.ref(self))  # a process ending early does not end mid-reservation

    def _reserve(self) -> None:
        left = self.budget
        while left >= ALIGN and not self.stopped:
            size = min(self.chunk, left)
            try:
                self.chunks.append(torch.empty(size, dtype=torch.uint8, pin_memory=self.pin))
            except RuntimeError:  # no more lockable memory: what was reserved is what there is
                return
            left -= size

    def wait(self) -> None:
        """Until every chunk is reserved (tests, benchmarks)."""
        if self._thread is not None:
            self._thread.join()

    @property
    def reserved(self) -> int:
        return sum(c.numel() for c in self.chunks)

    def take(self, like: torch.Tensor) -> torch.Tensor | None:
        """A pinned CPU tensor shaped like `like` from the chunks reserved so far, or None."""
        nbytes = like.numel() * like.element_size()
        if nbytes > self.chunk:
            return None
        ready = len(self.chunks)  # the reserving thread only appends
        while self.index < ready:
            block = self.chunks[self.index]
            start = -(-self.offset // ALIGN) * ALIGN
            if start + nbytes <= block.numel():
                self.offset = start + nbytes
                return block[start:start + nbytes].view(like.dtype).view(like.shape)
            self.index, self.offset = self.index + 1, 0
        return None

    def reset(self) -> None:
        self.index = self.offset = 0

    def close(self) -> None:
        self.stopped = True


def _stop(ref) -> None:
    pinned = ref()
    if pinned is not None:
        pinned.close()
        pinned.wait()


# ---- the stash ---------------------------------------------------------------------------------------------------


@dataclass
class _Kept:
    layer: int  # which checkpointed decoder layer
    cpu: torch.Tensor
    gpu: torch.Tensor | None = None  # on the GPU: among the newest, or brought back
    ready: object = None  # brought back: the event its copy ends with
    out: object = None  # the copy out: its event, while it may still be running
    source: torch.Tensor | None = None  # the output itself, held until the copy out has read it
    version: int = 0  # the output's version when it was kept: changed in place since, it is void
    void: bool = False
    handed: bool = False


class _Handed(torch.autograd.Function):
    """The kept output, standing in for the product during the recomputation: it needs gradients where the product
    did, so the operations after it save the same tensors. The recomputation's own graph is never run backward."""

    @staticmethod
    def forward(ctx, x, holder):
        return holder.pop().detach()  # a tensor of its own, without the forward pass's history

    @staticmethod
    def backward(ctx, g):  # pragma: no cover - the recomputed graph only supplies saved tensors
        return None, None


class Stash:
    """Frozen layers' outputs kept through the forward pass, handed back in the recomputation (see the module)."""

    def __init__(self, pinned: Pinned, *, keep: int = int(STASH_KEEP), lag: int = int(STASH_LAG), device: str = "cuda"):
        self.device = torch.device(device).type
        self.streams = torch.get_device_module(self.device)
        self.pinned, self.keep, self.lag = pinned, keep, lag
        self.stream = self.streams.Stream()
        self.useless: set[int] = set()  # modules whose output the recomputation did not ask for
        self.on = False
        self.kept = self.handed = self.skipped = 0  # outputs, over all micro-batches (log, tests)
        self.batches = 0  # micro-batches whose backward pass asked for kept outputs
        self.bytes_kept = self.bytes_handed = 0
        self._reset()

    def _reset(self) -> None:
        self.items: list[_Kept] = []
        self.queues: dict[int, deque[int]] = {}
        self.asked: set[int] = set()
        self.pending: deque[_Kept] = deque()
        self.lagging = 0  # bytes whose copy out may still be running
        self.on_gpu = 0  # bytes of the newest outputs held on the GPU
        self.pinned.reset()

    def __enter__(self):
        self._reset()
        self.on = True
        return self

    def __exit__(self, *exc):
        if self.asked:
            # A module whose output was kept and not asked for: the recomputation stops before it.
            self.useless |= set(self.queues) - self.asked
            self.batches += 1
            if self.batches == REPORT_AT:
                self._report()
        self.on = False
        self._reset()
        return False

    def _report(self) -> None:
        handed = sum(i.handed and i.gpu is None and not i.void for i in self.items)
        gib = sum(i.cpu.numel() * i.cpu.element_size() for i in self.items) / 2**30
        log.info("keep_outputs: in micro-batch %d, %d frozen outputs came back for the backward pass instead of being "
                 "computed again (%.1f GiB kept, %.1f GiB of pinned memory reserved); %d not kept so far (memory or bus)",
                 self.batches, handed, gib, self.pinned.reserved / 2**30, self.skipped,
                 extra=logs.zh(f"keep_outputs：第 {self.batches} 个小批次里，{handed} 个冻结层输出直接取回给反向传播，不用再算"
                               f"（留存 {gib:.1f} GiB，已预留 {self.pinned.reserved / 2**30:.1f} GiB 锁页内存）；"
                               f"至今有 {self.skipped} 个没有留存（内存或带宽不够）"))

    def attach(self, model) -> int:
        """Let the frozen linear layers inside `model`'s checkpointed decoder layers be kept; returns how many."""
        n = 0
        for index, layer in enumerate(decoder_layers(model)):
            for module in layer.modules():
                if (isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
                        and not getattr(module, "_stash", None)):
                    module.forward = functools.partial(self._forward, module, index, module.forward)
                    module._stash = True
                    n += 1
        return n

    # ---- the forward pass: keep ----------------------------------------------------------------------------
    def _forward(self, module, layer: int, inner, x, *args, **kwargs):
        key = id(module)
        if active() and self.on:
            queue = self.queues.get(key)
            if queue:
                self.asked.add(key)
                y = self._hand(queue.popleft(), x)
                if y is not None:
                    return y
        y = inner(x, *args, **kwargs)
        if (self.on and not active() and torch.is_grad_enabled() and y.requires_grad and key not in self.useless
                and y.is_contiguous() and y.device.type == self.device):
            self._keep(key, layer, y)
        return y

    def _keep(self, key: int, layer: int, y: torch.Tensor) -> None:
        self._retire()
        nbytes = y.numel() * y.element_size()
        if self.lagging + nbytes > self.lag:
            self.skipped += 1
            return
        cpu = self.pinned.take(y)
        if cpu is None:
            self.skipped += 1
            return
        self.stream.wait_stream(self.streams.current_stream())  # y is complete before it is copied
        with self.streams.stream(self.stream):
            cpu.copy_(y, non_blocking=True)
            event = self.stream.record_event()
        item = _Kept(layer, cpu, out=event, source=y, version=y._version)
        self.pending.append(item)
        self.lagging += nbytes
        # The newest outputs stay on the GPU too, up to `keep` bytes: the recomputation starts with them.
        item.gpu = y
        self.on_gpu += nbytes
        i = 0
        while self.on_gpu > self.keep and i < len(self.items):
            old = self.items[i]
            if old.gpu is not None:
                old.gpu = None
                self.on_gpu -= old.cpu.numel() * old.cpu.element_size()
            i += 1
        self.queues.setdefault(key, deque()).append(len(self.items))
        self.items.append(item)
        self.kept += 1
        self.bytes_kept += nbytes

    def _retire(self, wait: bool = False) -> None:
        """Forget the outputs whose copy out has finished; one changed in place meanwhile is void."""
        while self.pending:
            item = self.pending[0]
            if item.out is not None:  # None on "cpu": the copy was done when it was made
                if not wait and not item.out.query():
                    return
                item.out.synchronize()
            self.pending.popleft()
            item.void = item.source._version != item.version
            item.source = item.out = None
            self.lagging -= item.cpu.numel() * item.cpu.element_size()

    # ---- the recomputation: hand back ------------------------------------------------------------------------
    def _hand(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        self._retire(wait=True)
        item = self.items[index]
        if item.gpu is not None and item.ready is None and item.gpu._version != item.version:
            item.void = True  # held on the GPU since the forward pass, and changed in place there
        if item.void:
            item.gpu, item.handed = None, True
            return None
        self._bring(item.layer)  # nothing to do when it was brought back ahead
        item.handed = True
        compute = self.streams.current_stream()
        if item.ready is not None:
            compute.wait_event(item.ready)
            if self.device != "cpu":
                item.gpu.record_stream(compute)  # allocated on the copy stream, used on this one
            item.ready = None
        y, item.gpu = item.gpu, None
        self.handed += 1
        self.bytes_handed += y.numel() * y.element_size()
        earlier = [i.layer for i in self.items[:index] if i.layer < item.layer]
        if earlier:
            self._bring(max(earlier))  # the layer recomputed next comes back while this one runs
        return _Handed.apply(x, [y])

    def _bring(self, layer: int) -> None:
        """Start copying back the kept outputs of `layer` that are only in CPU memory."""
        for item in self.items:
            if item.layer == layer and item.gpu is None and not (item.void or item.handed):
                with self.streams.stream(self.stream):
                    item.gpu = item.cpu.to(self.device, non_blocking=True, copy=True)
                    item.ready = self.stream.record_event()


def decoder_layers(model) -> list:
    """The modules transformers checkpoints one by one (its decoder layers), in order."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - older transformers
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
