"""One decoder layer's frozen 4-bit linears, bitsandbytes' bf16 path against core/fp8.py's FP8 path.

For each linear of a Llama layer of the given shape (q, k, v, o, gate, up, down), a
bitsandbytes Linear4bit (NF4, double quant, bf16 compute) with random weights, and a batch of
16 x 512 rows: what a training step of the default preset does with it under gradient
checkpointing (a forward pass without gradients, the recomputed forward pass, the gradient of
the input), timed with CUDA events. Then the same with core/fp8.py's modes: "all" (every product in
FP8) and "backward" (the recomputed forward pass and the input gradients in FP8).
Also the bare multiplications (bf16 matmul, FP8 _scaled_mm) without dequantizing or scaling.

    python bench/fp8.py --shape 13b [--rows 8192] [--iters 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import fp8  # noqa: E402

SHAPES = {"13b": (5120, 13824, 40), "7b": (4096, 11008, 32)}


def timed(fn, iters: int) -> float:
    """Milliseconds a call, after three warm-up calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters


def layers(hidden: int, mlp: int):
    import bitsandbytes as bnb

    shapes = [(hidden, hidden)] * 4 + [(hidden, mlp)] * 2 + [(mlp, hidden)]  # (in, out)
    out = []
    for k, n in shapes:
        lin = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                                compress_statistics=True)
        lin.weight = bnb.nn.Params4bit((torch.randn(n, k) * 0.02).to(torch.bfloat16), requires_grad=False,
                                       quant_type="nf4", compress_statistics=True)
        out.append(lin.cuda())
    return out


def step(lins, xs, gs, recompute=None):
    """The default preset's work with a layer's linears in one checkpointed step: a forward pass without
    gradients, then the recomputed forward pass (inside `recompute`, as torch's checkpoint enters it) and
    the gradients of the inputs."""
    with torch.no_grad():
        for lin, x in zip(lins, xs, strict=True):
            lin(x)
    with recompute or contextlib.nullcontext():
        ys = [lin(x) for lin, x in zip(lins, xs, strict=True)]
    torch.autograd.backward(ys, gs, inputs=list(dict.fromkeys(xs)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="13b", choices=SHAPES)
    p.add_argument("--rows", type=int, default=16 * 512)
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args()
    hidden, mlp, depth = SHAPES[a.shape]
    torch.manual_seed(0)
    lins = layers(hidden, mlp)
    xs = [torch.randn(a.rows, lin.in_features, device="cuda", dtype=torch.bfloat16, requires_grad=True) for lin in lins]
    gs = [torch.randn(a.rows, lin.out_features, device="cuda", dtype=torch.bfloat16) * 1e-3 for lin in lins]
    flops = sum(6 * a.rows * lin.in_features * lin.out_features for lin in lins)  # 2 forward + 1 input gradient
    res = {"shape": a.shape, "rows": a.rows, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "fp8_supported": fp8.supported() or "yes"}

    ms = timed(lambda: step(lins, xs, gs), a.iters)
    res["bnb_bf16_ms_layer"] = ms
    # bare multiplications, no dequantizing or scaling: the ceilings
    ws = [torch.randn(lin.out_features, lin.in_features, device="cuda", dtype=torch.bfloat16) for lin in lins]
    res["bare_bf16_ms_layer"] = timed(lambda: [(x @ w.t(), x @ w.t(), g @ w) for x, w, g in zip(xs, ws, gs, strict=True)], a.iters)
    q = [(fp8.rows(x.detach()), fp8.rows(w), fp8.rows(g), fp8.rows(w.t())) for x, w, g in zip(xs, ws, gs, strict=True)]

    def bare8():
        for xq, wq, gq, wtq in q:
            for _ in range(2):
                torch._scaled_mm(xq[0], wq[0].t(), scale_a=xq[1], scale_b=wq[1].t(), out_dtype=torch.bfloat16)
            torch._scaled_mm(gq[0], wtq[0].t(), scale_a=gq[1], scale_b=wtq[1].t(), out_dtype=torch.bfloat16)

    res["bare_fp8_ms_layer"] = timed(bare8, a.iters)
    # the same three products in FP8 through the layers (core/fp8.py)
    ref = lins[4](xs[4]).detach()
    fp8.use(torch.nn.ModuleList(lins))
    res["fp8_ms_layer"] = timed(lambda: step(lins, xs, gs), a.iters)
    y = lins[4](xs[4]).detach()
    res["fp8_rel_error_vs_bf16"] = round(float((y.float() - ref.float()).norm() / ref.float().norm()), 4)
    # mode "backward": the first forward pass in bf16, the recomputed one and the input gradients in FP8
    fp8.use(torch.nn.ModuleList(lins), "backward")
    res["fp8_backward_ms_layer"] = timed(lambda: step(lins, xs, gs, fp8.RECOMPUTE()[1]), a.iters)
    for k in [k for k in res if k.endswith("_ms_layer")]:
        res[k.replace("_ms_layer", "_s_step")] = round(res[k] * depth / 1000, 3)
        res[k.replace("_ms_layer", "_tflops")] = round(flops / res[k] / 1e9, 1)
        res[k] = round(res[k], 2)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
