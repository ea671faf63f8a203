"""Activations saved for the backward pass wait in CPU memory, and come back just before they are needed.

With gradient checkpointing, what autograd keeps between the forward and the backward pass is
mostly each decoder layer's input (batch x length x hidden: 84 MB a layer for 16 rows of 512
tokens on a 13B model, 3.4 GB in all). `Offload` copies every such tensor to pinned CPU memory
on a side stream as it is saved, and in the backward pass, when one comes back, it already starts
copying the next ones (`ahead`), so the math never waits for the bus.

Two things make it cheaper than a plain saved-tensors hook:

  - the newest tensors of the forward pass (`keep`) also stay on the GPU: the backward pass
    starts with them, so bringing them back would be a wasted round trip;
  - pinned memory comes from one block (`Arena`) that can be reserved in a background thread
    while the model loads. Pinning gigabytes one tensor at a time costs seconds (about 3 s for
    13B's 3.4 GB, measured); later steps reuse the same block.

Enter it around one forward and backward pass (one micro-batch), as trl does with its own
`activation_offloading`. Written for CUDA; any device with torch's stream API works (on "cpu"
the copies are plain copies, which is how the CPU tests check the bookkeeping).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

MIN_BYTES = 1 << 20  # smaller tensors are not worth a copy


class Arena:
    """One block of pinned CPU memory handed out front to back; reset for every micro-batch."""

    def __init__(self, nbytes: int = 0, *, pin: bool = True):
        self.pin = pin
        self.block: torch.Tensor | None = None
        self.offset = 0
        self._thread: threading.Thread | None = None
        if nbytes:
            self._thread = threading.Thread(target=self._reserve, args=(nbytes,), name="pin-memory", daemon=True)
            self._thread.start()

    def _reserve(self, nbytes: int) -> None:
        try:
            self.block = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
        except RuntimeError:  # not enough lockable memory: fall back to pinning tensor by tensor
            self.block = None

    def take(self, like: torch.Tensor) -> torch.Tensor:
        """A pinned CPU tensor shaped like `like`, from the block while it lasts."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        nbytes = like.numel() * like.element_size()
        start = -(-self.offset // 256) * 256
        if self.block is not None and start + nbytes <= self.block.numel():
            self.offset = start + nbytes
            return self.block[start:start + nbytes].view(like.dtype).view(like.shape)
        return torch.empty(like.shape, dtype=like.dtype, pin_memory=self.pin)

    def reset(self) -> None:
        self.offset = 0


@dataclass
class _Saved:
    cpu: torch.Tensor
    gpu: torch.Tensor | None  # on the GPU: still among the newest, or brought back
    key: tuple | None  # while we hold the GPU tensor, its address can't be reused: a repeat save is the same tensor
    ready: object | None = None  # brought back ahead of time: the event the copy ends with
    uses: int = 1  # the same tensor can be saved by several autograd nodes


class Offload(torch.autograd.graph.saved_tensors_hooks):
    """Saved-tensor hooks: large saved activations to pinned CPU memory and back, prefetched."""

    def __init__(self, arena: Arena | None = None, *, keep: int = 2, ahead: int = 2, min_bytes: int = MIN_BYTES,
                 device: str = "cuda"):
        self.device = torch.device(device).type
        self.streams = torch.get_device_module(self.device)  # torch.cuda: Stream, current_stream, stream
        self.arena = arena or Arena(pin=self.device != "cpu")
        self.keep, self.ahead, self.min_bytes = keep, ahead, min_bytes
        self.stream = self.streams.Stream()
        self.bytes_out = self.bytes_back = 0  # totals over all micro-batches, for the log and the tests
        self._reset()
        super().__init__(self._pack, self._unpack)

    def _reset(self) -> None:
        self.saved: list[_Saved] = []
        self.by_key: dict[tuple, int] = {}
        self.cursor: int | None = None  # where the look-ahead of the backward pass stopped
        self.in_flight = 0  # brought back ahead of time, not yet asked for
        self.arena.reset()

    def __enter__(self):
        self._reset()
        return super().__enter__()

    def __exit__(self, *exc):
        self._reset()  # whatever the backward pass did not ask for
        return super().__exit__(*exc)

    # ---- forward: save -----------------------------------------------------------------------
    def _pack(self, t: torch.Tensor):
        if (t.device.type != self.device or isinstance(t, torch.nn.Parameter) or not t.is_contiguous()
                or t.numel() * t.element_size() < self.min_bytes):
            return t
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if key in self.by_key:
            index = self.by_key[key]
            self.saved[index].uses += 1
            return index
        self.stream.wait_stream(self.streams.current_stream())  # t is complete before it is copied
        with self.streams.stream(self.stream):
            cpu = self.arena.take(t)
            cpu.copy_(t, non_blocking=True)
        self.bytes_out += cpu.numel() * cpu.element_size()
        self._record(t, self.stream)  # its memory is not reused before the copy has read it
        index = len(self.saved)
        self.saved.append(_Saved(cpu=cpu, gpu=t, key=key))
        self.by_key[key] = index
        # Only the newest `keep` tensors stay on the GPU as well; older ones live on in CPU memory.
        if index >= self.keep:
            self._drop(self.saved[index - self.keep])
        return index

    def _drop(self, item: _Saved) -> None:
        if item.key is not None:
            del self.by_key[item.key]
            item.key = None
        item.gpu = None

    # ---- backward: bring back ------------------------------------------------------------------
    def _unpack(self, handle):
        if isinstance(handle, torch.Tensor):
            return handle
        item = self.saved[handle]
        if item.gpu is None:
            self._fetch(item)
        elif item.ready is not None:
            self.in_flight -= 1
        t = item.gpu
        if item.ready is not None:
            compute = self.streams.current_stream()
            compute.wait_event(item.ready)
            self._record(t, compute)  # allocated on the copy stream, used on this one
            item.ready = None
        item.uses -= 1
        if item.uses <= 0:
            self._drop(item)  # autograd holds it now; the CPU copy stays until the next micro-batch
        self._prefetch(handle - 1 if self.cursor is None else min(handle - 1, self.cursor))
        return t

    def _fetch(self, item: _Saved) -> None:
        with self.streams.stream(self.stream):
            item.gpu = item.cpu.to(self.device, non_blocking=True, copy=True)
            item.ready = self.stream.record_event()
        self.bytes_back += item.cpu.numel() * item.cpu.element_size()

    def _record(self, t: torch.Tensor, stream) -> None:
        if self.device != "cpu":  # CPU memory has no streams to wait for
            t.record_stream(stream)

    def _prefetch(self, start: int) -> None:
        """Start copying back the next tensors the backward pass will ask for (it goes in reverse saving order)."""
        i = start
        while i >= 0 and self.in_flight < self.ahead:
            item = self.saved[i]
            if item.gpu is None and item.uses > 0:
                self._fetch(item)
                self.in_flight += 1
            i -= 1
        self.cursor = i
