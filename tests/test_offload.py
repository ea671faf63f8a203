"""core/offload.py's bookkeeping, on CPU: what goes out, what comes back, and that the numbers survive.

On "cpu" the copies are plain copies and the streams do nothing; the GPU test in test_gpu.py checks
the same on CUDA streams, with the GPU memory it frees.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from core.offload import Arena, Offload

MB = 2**20


@pytest.fixture
def stack():
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)) for _ in range(6))
    x = torch.randn(2048, 256, requires_grad=True)  # 2 MB: every layer input is worth offloading
    return layers, x


def _step(layers, x, ctx):
    """Forward and backward through checkpointed layers under `ctx`; the gradients."""
    for p in [x, *layers.parameters()]:
        p.grad = None
    with ctx:
        h = x
        for layer in layers:
            h = h + checkpoint(layer, h, use_reentrant=False)
        h.square().sum().backward()
    return [p.grad.clone() for p in [x, *layers.parameters()]]


def test_offloaded_layer_inputs_come_back_as_the_same_numbers(stack):
    layers, x = stack
    plain = _step(layers, x, contextlib.nullcontext())
    arena = Arena(8 * MB, pin=False)  # room for 4 of the 7 saved tensors; the rest are allocated one by one
    offload = Offload(arena, keep=2, ahead=2, device="cpu")
    for _ in range(2):  # the second micro-batch reuses the block
        grads = _step(layers, x, offload)
        for a, b in zip(plain, grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Out: the 6 layer inputs and the output saved by square(); back: all but the newest 2.
    assert offload.bytes_out == 2 * 7 * 2 * MB
    assert offload.bytes_back == 2 * 5 * 2 * MB
    assert arena.offset == 0  # reset after each micro-batch


def test_a_corrupted_copy_is_caught(stack):
    """The comparison above can fail: an arena that hands out one slot twice gives other gradients."""
    layers, x = stack
    plain = _step(layers, x, contextlib.nullcontext())

    class OneSlot(Arena):
        def take(self, like):
            self.offset = 0
            return super().take(like)

    grads = _step(layers, x, Offload(OneSlot(8 * MB, pin=False), device="cpu"))
    assert any(not torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(plain, grads, strict=True))


def test_small_tensors_parameters_and_repeats_are_not_copied():
    offload = Offload(Arena(pin=False), device="cpu")
    weight = torch.nn.Parameter(torch.randn(1024, 1024))  # 4 MB, but a parameter: it stays where it is
    big = torch.randn(1024, 1024, requires_grad=True)
    small = torch.randn(16, 16, requires_grad=True)
    with offload:
        out = (big * big).sum() + (small * small).sum() + (big @ weight).sum()
        out.backward()
    # big is saved three times (twice by the product, once by the matmul): copied out once
    assert offload.bytes_out == 4 * MB
    assert torch.allclose(big.grad, 2 * big + weight.sum(dim=1).expand_as(big), rtol=1e-4, atol=1e-3)
