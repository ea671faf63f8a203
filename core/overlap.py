"""Independent kernels of one recorded decoding step side by side on the GPU, each kernel as it is.

A 16-bit decoding step on one token is a chain of kernels, most of them tiny (norms, rotary embedding,
activations: a few microseconds each) between a few projections that read every weight. In a CUDA
graph recorded from one stream they run one after another, though some do not depend on each other:
the key and value projections read the same normed input as the query's, and the rotary embedding of
the keys needs nothing of the queries'; the MLP's up projection does not wait for its gate's
activation. `Overlap` lets them run beside each other while a step is recorded (core.decode.Replayed):

- a linear layer whose input an earlier linear of the same recording already read (k and v after q,
  up after gate) runs on a side stream that waits only for that input to be written, so it runs beside
  the first projection;
- an operation whose tensors are only that side stream's results, or older than this recording (the
  weights, an earlier graph's results), follows it onto that stream (the rotary embedding of the keys);
- anything else that reads a side stream's result first makes the main stream wait for that stream.

Every operation still runs its own kernel on the same inputs; only the order between independent
kernels changes, so the step gives the same bits (core.decode.Replayed.check compares them).
"""

from __future__ import annotations

import weakref

# Operations that make no kernel: they describe a tensor (its shape, a view of its memory). Reading a side
# stream's result through them does not need the result yet, so they neither wait nor follow.
_SHAPES = frozenset({
    "view", "transpose", "unsqueeze", "squeeze", "expand", "permute", "size", "dim", "stride", "numel",
    "__get__", "is_contiguous", "data_ptr", "untyped_storage", "storage_offset", "element_size", "__len__",
    "is_floating_point", "is_complex", "get_device",
})


def _tensors(value, into: list) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        into.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _tensors(v, into)
    elif isinstance(value, dict):
        for v in value.values():
            _tensors(v, into)
    return into


def _plain_index(index) -> bool:
    """True for an index that makes a view (integers, slices, None, ...), not a gather."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)


def _in_place(name: str) -> bool:
    """True for an operation that writes into its first argument (add_, copy_, +=, x[i] = ...)."""
    return (name.endswith("_") and not name.startswith("_")) or name in (
        "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ior__", "__iand__", "__setitem__")


def _where(t) -> int:
    """A tensor's memory, as the allocator handed it out: views of one result share it."""
    return t.untyped_storage().data_ptr()


def mode(sides: int = 2):
    """A torch function mode (enter it around the recorded forward) that spreads independent kernels over
    `sides` side streams; `join()` before a recording ends brings every side stream back to the main one."""
    import torch
    from torch.overrides import TorchFunctionMode

    linear = torch.nn.functional.linear

    class Overlap(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.main = None
            self.sides: list = []
            self.forked: set[int] = set()  # side streams forked from the main one and not joined yet
            self.pending: dict[int, int] = {}  # memory -> the side stream that writes it, not waited for yet
            self.ready: dict = {}  # memory the main stream wrote in this recording -> an event recorded right after it
            # Inputs some linear layer already read: memory -> the tensor, held weakly. Memory freed and handed out
            # again within a recording (the next layer's norm where the last MLP's input was) is a new input.
            self.read: dict[int, weakref.ref] = {}
            self.sided: set[int] = set()  # memory a side stream wrote in this recording
            self.reading: dict[int, set[int]] = {}  # memory -> side streams that read it, not waited for yet
            self.seen: set[int] = set()  # memory the main stream read or wrote in this recording
            self.forks = 0  # how many operations ran on a side stream (for the tests and the notes)

        def begin(self) -> None:
            """A new recording: the main stream is the one current now."""
            self.main = torch.cuda.current_stream()
            if not self.sides or self.sides[0].device != self.main.device:
                self.sides = [torch.cuda.Stream(device=self.main.device) for _ in range(sides)]
            self.forked, self.pending, self.read, self.ready = set(), {}, {}, {}
            self.sided, self.reading, self.seen = set(), {}, set()

        def join(self, side: int | None = None) -> None:
            for s in ([side] if side is not None else list(self.forked)):
                if s in self.forked:
                    self.main.wait_stream(self.sides[s])
                    self.forked.discard(s)
                    self.pending = {m: x for m, x in self.pending.items() if x != s}
                    self.reading = {m: x - {s} for m, x in self.reading.items() if x - {s}}

        def _on(self, s: int, func, args, kwargs, ins):
            stream = self.sides[s]
            for t in ins:
                if _where(t) not in self.pending:  # the main stream's memory: not handed out again meanwhile
                    t.record_stream(stream)
                self.reading.setdefault(_where(t), set()).add(s)
            with torch.cuda.stream(stream):
                out = func(*args, **kwargs)
            for t in _tensors(out, []):
                self.pending[_where(t)] = s
                self.sided.add(_where(t))
            self.forks += 1
            return out

        def _beside(self, func, name: str, places: list[int], on: set[int], ins: list) -> int | None:
            """The side stream an operation runs on, or None for the main stream."""
            if _in_place(name) and places[0] in self.seen:
                # A side stream starts at an event, not at the main stream's end: it must not write what the main
                # stream has read or written in this recording, which may still be in use there.
                return None
            if not on and func is linear:
                source = places[0]
                first = self.read.get(source)
                if first is None or first() is None:
                    self.read[source] = weakref.ref(ins[0])
                    return None
                # Another projection of an input already projected: beside the first, from when its input was written.
                free = next((s for s in range(len(self.sides)) if s not in self.forked), None)
                if free is not None:
                    ready = self.ready.get(source)
                    if ready is not None:
                        self.sides[free].wait_event(ready)
                    else:
                        self.sides[free].wait_stream(self.main)
                    self.forked.add(free)
                return free
            if len(on) == 1 and not any(p in self.ready for p in places if p not in self.pending):
                # Its inputs are that stream's, or from before this recording (weights, an earlier graph's results):
                # it follows that stream. One that also reads the main stream's work stays there.
                return next(iter(on))
            return None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in _SHAPES or (name == "__getitem__" and len(args) > 1 and _plain_index(args[1])):
                return func(*args, **kwargs)
            ins = [t for t in _tensors((args, kwargs), []) if t.is_cuda]
            if not ins or not torch.cuda.is_current_stream_capturing():
                return func(*args, **kwargs)
            places = [_where(t) for t in ins]
            on = {self.pending[p] for p in places if p in self.pending}
            side = self._beside(func, name, places, on, ins)
            if side is not None:
                return self._on(side, func, args, kwargs, ins)
            for s in on:
                self.join(s)
            if _in_place(name):  # writing what a side stream may still be reading: wait for it first
                for s in list(self.reading.get(places[0], ())):
                    self.join(s)
            for t, p in zip(ins, places, strict=True):
                if p in self.sided:  # a side stream's memory: not handed out again there while this reads it
                    t.record_stream(self.main)
            self.seen.update(places)
            out = func(*args, **kwargs)
            if out is not None:
                ready = torch.cuda.Event()
                ready.record(self.main)
                for t in _tensors(out, []):
                    self.seen.add(_where(t))
                    self.ready[_where(t)] = ready
            return out

    return Overlap()
