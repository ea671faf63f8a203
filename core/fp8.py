"""The frozen 4-bit base weights multiply in FP8 on GPUs that have FP8 matrix units.

In a QLoRA step almost all the arithmetic is the frozen base layers: the forward pass, its
recomputation for the backward pass, and the gradient of each layer's input. bitsandbytes does
each of them by turning the NF4 weight back into bf16 and multiplying in bf16. On a Hopper GPU
(and others with FP8 units) an FP8 multiplication has twice bf16's rate.

Here the bf16 weight and the layer's input are each rounded to FP8 (e4m3) with one scale per row,
multiplied by `torch._scaled_mm` into bf16, and the gradient of the input is computed the same way
from the gradient of the output (one scale per row) and the weight scaled per column.

The mode (`core.config.FP8_MODES`) says which multiplications: "all" of them, or only those of
the backward pass ("backward": the input gradients and the recomputed forward pass, whose outputs
only feed the gradients), where the forward pass that gives the loss stays bf16, as without FP8.
On an H200 (docs/BENCHMARKS.md): "all" makes a 13B step about 16% faster but the embedded model's
held-out loss worse; "backward" keeps that loss and makes a 13B step 2-8% faster, a 7B step as fast or, in
some processes, 15-17% slower.

`use(model, mode)` swaps the forward of every bitsandbytes 4-bit layer, LoRA's base layers among
them; the LoRA layers themselves stay in bf16. Anything this path cannot take (a row count that is
not a multiple of 16, a GPU without FP8) goes through bitsandbytes' own forward.
"""

from __future__ import annotations

import contextlib
import functools

import torch

E4M3 = torch.float8_e4m3fn
# Scaling to 440 rather than e4m3's largest value (448) leaves room for the bf16 roundings of the
# scale and of the product, so no value ever rounds past the largest one.
TOP = 440.0
ALIGN = 16  # _scaled_mm wants every dimension a multiple of 16


def rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`t` (2-D) in FP8 with one float32 scale per row: t ~= q * scale; q is row-major."""
    amax = torch.linalg.vector_norm(t, ord=float("inf"), dim=1, keepdim=True).float().clamp_(min=1e-12)
    inv = (TOP / amax).to(t.dtype)
    return (t * inv).to(E4M3).contiguous(), inv.float().reciprocal_()


_compiled = None


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows`, fused into two GPU kernels by torch.compile on a GPU (eager it reads and writes `t` four
    times, which costs more than FP8 saves: bench/fp8.py); one graph for every shape."""
    global _compiled
    if not t.is_cuda:
        return rows(t)
    if _compiled is None:
        _compiled = torch.compile(rows, dynamic=True)
    return _compiled(t.detach())


class _Base(torch.autograd.Function):
    """y = x @ W.T for a frozen bitsandbytes 4-bit weight W, in FP8 or bf16; the input's gradient in FP8.
    Nothing of x is kept for the backward pass."""

    @staticmethod
    def forward(ctx, x, layer, in_fp8: bool):
        ctx.layer, ctx.shape = layer, x.shape
        x2 = x.reshape(-1, x.shape[-1])
        if not in_fp8:
            return x2 @ dequantized(layer).t()
        xq, sx = _rows(x2)
        wq, sw = weight(layer)
        return torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=sw, out_dtype=x.dtype)

    @staticmethod
    def backward(ctx, g):
        gq, sg = _rows(g.reshape(-1, g.shape[-1]))
        wtq, swt = weight(ctx.layer, transposed=True)
        return torch._scaled_mm(gq, wtq.t(), scale_a=sg, scale_b=swt, out_dtype=g.dtype).reshape(ctx.shape), None, None


# While torch's checkpoint recomputes a layer's forward pass for the backward pass (mode "backward").
_recomputing = 0


@contextlib.contextmanager
def _recompute():
    global _recomputing
    _recomputing += 1
    try:
        yield
    finally:
        _recomputing -= 1


class Recompute(str):
    """torch.utils.checkpoint's `context_fn` for mode "backward": the recomputed forward passes multiply in FP8.

    A str, so that the training arguments that carry it to the checkpoint still turn into JSON (wandb's
    and tensorboard's record of the run)."""

    def __call__(self):
        return contextlib.nullcontext(), _recompute()


RECOMPUTE = Recompute("fp8-recompute")


def dequantized(layer) -> torch.Tensor:
    """The layer's frozen weight in its compute dtype (bf16), by bitsandbytes' own kernel."""
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)


def weight(layer, transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's frozen weight in FP8: (N, K) row-major scaled per row or, with `transposed`, (K, N)
    row-major scaled per column of the weight; the scales as a row of float32, one per output column
    of the product, as _scaled_mm takes them.

    Dequantized to bf16 by bitsandbytes' own kernel first. Two ways that skip the bf16 copy measured
    slower on an H200 (bench/fp8.py, docs/BENCHMARKS.md): decoding the 4-bit values to FP8 in one
    compiled kernel, and one scale per weight bounded by its 4-bit absmax.
    """
    w = dequantized(layer)
    q, scale = _rows(w.t() if transposed else w)
    return q, scale.t()


def _forward(self, mode: str, x: torch.Tensor) -> torch.Tensor:
    """Linear4bit's forward through _Base where the shapes allow, bitsandbytes' own otherwise."""
    qs = self.weight.quant_state
    n, k = qs.shape
    m = x.numel() // k if x.shape[-1] == k else 0
    fits = m and m % ALIGN == 0 and n % ALIGN == 0 and k % ALIGN == 0
    if not (fits and x.dtype == torch.bfloat16):  # per-row scales give bf16 only
        return type(self).forward(self, x)
    y = _Base.apply(x, self, mode == "all" or (mode == "backward" and _recomputing > 0))
    if self.bias is not None:
        y = y + self.bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], n)


def use(model, mode: str = "all") -> int:
    """Let every bitsandbytes 4-bit layer of `model` multiply in FP8 as `mode` says; returns how many.

    Mode "backward" needs torch's checkpoint to recompute with `context_fn=RECOMPUTE`; without it, only the
    input gradients multiply in FP8."""
    import bitsandbytes as bnb

    from core.config import FP8_MODES

    if mode not in FP8_MODES[1:]:
        raise ValueError(f"fp8 mode {mode!r} is not one of {', '.join(FP8_MODES[1:])}")
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.forward = functools.partial(_forward, module, mode)
            n += 1
    return n


def supported(device: int | str = 0) -> str | None:
    """None where FP8 multiplications with per-row scales run on `device`, else why not (one line)."""
    if not torch.cuda.is_available():
        return "no GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"compute capability {major}.{minor} has no FP8 units (8.9 or newer has)"
    try:
        a = torch.ones(ALIGN, 2 * ALIGN, device=device, dtype=torch.bfloat16)
        y = torch._scaled_mm(a.to(E4M3), a.to(E4M3).t(), scale_a=torch.ones(ALIGN, 1, device=device),
                             scale_b=torch.ones(1, ALIGN, device=device), out_dtype=torch.bfloat16)
        torch.cuda.synchronize(device)
    except RuntimeError as e:
        return f"torch._scaled_mm with per-row scales: {str(e).splitlines()[0]}"
    return None if bool((y == 2 * ALIGN).all()) else "torch._scaled_mm gave a wrong product"
