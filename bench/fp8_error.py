"""How far FP8 products of the frozen 4-bit weights land from bf16's, on the embedded model's own weights and rows.

No GPU and no speed: each operand is rounded to e4m3 with its scales and multiplied in float32, which is what an FP8
matrix unit computes up to the order of its sums. The weights are first rounded to NF4 (blocks of 64, double quant),
as QLoRA holds them. Variants:

  - bf16: both operands in bf16 (today's default, the reference);
  - rows: one scale per row of the input and of the weight (core.fp8, `--fp8-base all`);
  - blocks: one scale per 1 x 128 piece of the input and per 128 x 128 tile of the weight;
  - input rows: the input in FP8 (one scale a row), the weight in bf16;
  - weight rows: the weight in FP8 (one scale a row), the input in bf16.

For each: the products' relative error against bf16's (Frobenius norm, over every linear layer of the decoder, on the
rows' real activations), and the base model's loss on the rows' replies with every decoder linear multiplied that
way (no training). The held-out loss after training with FP8 forward passes is what decides (docs/BENCHMARKS.md);
this only says which rounding moves the forward pass least.

    python bench/fp8_error.py --data belle_style_zh_1k.jsonl [--rows 48]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from core.fp8 import E4M3, TOP  # noqa: E402

BLOCK = 128


def fp8(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """`t` (2-D, float32) rounded to e4m3 with one scale per rows x cols tile, back in float32."""
    m, k = t.shape
    pr, pc = (-m) % rows, (-k) % cols
    padded = torch.nn.functional.pad(t, (0, pc, 0, pr))
    tiles = padded.reshape((m + pr) // rows, rows, (k + pc) // cols, cols)
    amax = tiles.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12)
    inv = (TOP / amax).to(torch.bfloat16).float()  # core.fp8 keeps the scale in the compute dtype
    q = (tiles * inv).to(E4M3).float() / inv
    return q.reshape(m + pr, k + pc)[:m, :k]


def as_rows(t: torch.Tensor) -> torch.Tensor:
    return fp8(t, 1, t.shape[1])


WAYS = {
    "bf16": (lambda x: x, lambda w: w),
    "rows": (as_rows, as_rows),
    "blocks": (lambda x: fp8(x, 1, BLOCK), lambda w: fp8(w, BLOCK, BLOCK)),
    "input rows": (as_rows, lambda w: w),
    "weight rows": (lambda x: x, as_rows),
}


class Product(torch.nn.Module):
    """A frozen linear layer whose weight is NF4-rounded, multiplying the way `WAYS[way]` says (set from outside)."""

    way = "bf16"
    errors: dict[str, list[float]] = {}

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        import bitsandbytes.functional as bnbf

        w = linear.weight.data.to(torch.bfloat16)
        q, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        self.weight = bnbf.dequantize_4bit(q, state).float()  # bf16 values, as bitsandbytes hands them out
        self.bias = None if linear.bias is None else linear.bias.data.float()
        self.prepared = {name: w_way(self.weight) for name, (_, w_way) in WAYS.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).float()  # the layer's input in the compute dtype
        ref = flat @ self.weight.t()
        x_way = WAYS[self.way][0]
        y = ref if self.way == "bf16" else x_way(flat) @ self.prepared[self.way].t()
        if self.way != "bf16":
            Product.errors.setdefault(self.way, []).append(float((y - ref).norm() / ref.norm().clamp(min=1e-12)))
        y = y.to(torch.bfloat16).float()  # the product comes out in bf16
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="Belle-layout JSON lines")
    p.add_argument("--rows", type=int, default=48)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    from core import models
    from core.config import PrepareConfig, TrainConfig
    from core.data import prepare
    from core.trainer import tokenized

    work = Path(tempfile.mkdtemp())
    prepare(PrepareConfig(input=a.data, out=str(work / "data"), sample=a.rows, seed=7, template="seed",
                          model="default", eval_ratio=0.0))
    model, tokenizer, _, _ = models.load_for_inference("default", dtype="float32", device="cpu")
    rows = tokenized(work / "data" / "train.jsonl", tokenizer, TrainConfig(max_seq_length=512))
    for layer in model.model.layers:
        for parent in layer.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, Product(child))
    results = {}
    for way in WAYS:
        Product.way, Product.errors, started = way, {}, time.time()
        total = count = 0.0
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.where(torch.tensor([row["completion_mask"]]) == 1, ids, -100)
            n = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
        errors = Product.errors.get(way, [0.0])
        results[way] = {"loss": round(total / count, 5), "product_error_mean": round(sum(errors) / len(errors), 5),
                        "product_error_max": round(max(errors), 5), "seconds": round(time.time() - started, 1)}
        print(json.dumps({"way": way, **results[way]}), flush=True)
    base = results["bf16"]["loss"]
    print(f"\n{'way':<12} {'loss':>9} {'vs bf16':>9} {'product error':>14} {'max':>8}")
    for way, r in results.items():
        print(f"{way:<12} {r['loss']:9.5f} {r['loss'] - base:+9.5f} {r['product_error_mean']:14.5f} "
              f"{r['product_error_max']:8.5f}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
