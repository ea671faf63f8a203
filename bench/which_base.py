"""Which base to merge into: the original 16-bit weights, or the NF4-rounded ones QLoRA trained against.

On the embedded model: the base's weights are rounded to NF4 and back by bitsandbytes exactly as a
4-bit load rounds them (core.fold.nf4_round: bf16, blocks of 64, double quantization), and a LoRA
adapter is trained on that rounded base (plain LoRA in float32 on a CPU computes the same forward
pass as QLoRA: the dequantized weights plus the adapter). The adapter is then merged both ways into
the original model (core.fold.fold, float16 and float32), and every model is scored the same way:
the mean loss on the reply tokens of the held-out rows (bench/quality.py's `reply_loss`).

    python bench/which_base.py --data assets/sample_zh.jsonl [--steps 20] [--max-seq-length 256]

"base + adapter (as trained)" is the reference: the model the run trained. On a GPU the rounding
is bitsandbytes' own too, and QLoRA computes in bf16 rather than float32.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def rounded_base(base: Path, out: Path) -> Path:
    """The base with every 4-bit-stored weight rounded to NF4 and back, in float32 (a model folder)."""
    import torch
    from safetensors.torch import load_file, save_file

    from core import fold

    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True)
    weights = load_file(str(base / "model.safetensors"))
    save_file({name: (fold.nf4_round(t) if fold.quantized(name, t) else t.to(torch.float32)).contiguous()
               for name, t in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    for name in fold.TOKENIZER_FILES + ("generation_config.json",):
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--work", default="")
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="which-base-"))
    import os

    os.environ.setdefault("QLORA_STUDIO_HOME", str(work / "home"))
    from quality import reply_loss

    from core import fold, models
    from core.config import PrepareConfig, preset
    from core.data import prepare
    from core.train import train

    base = models.embedded()
    rounded = rounded_base(base, work / "rounded")
    data = work / "data"
    if not data.is_dir():
        prepare(PrepareConfig(input=a.data, out=str(data), sample=0, seed=42, eval_ratio=0.2,
                              max_seq_length=a.max_seq_length, model=str(base)))
    run = work / "run"
    if not (run / "adapter").is_dir():
        status = train(preset("default", model=str(rounded), data=str(data), out=str(run), max_steps=a.steps,
                              batch_size=4, max_seq_length=a.max_seq_length, logging_steps=5, save_steps=0))
        assert status["state"] == "finished", status
    adapter = run / "adapter"
    merged = {}
    for weights in ("original", "as-trained"):
        for dtype in ("float16", "float32"):
            out = work / f"merged-{weights}-{dtype}"
            if not (out / "config.json").is_file():
                out.mkdir()
                rounding = {"double_quant": True, "dtype": "bfloat16"} if weights == "as-trained" else None
                fold.fold(base, adapter, out, dtype, lambda f, t: None, rounding)
            merged[(weights, dtype)] = out
    evals = data / "eval.jsonl"
    scored = [("base, no adapter", str(base), None), ("base + adapter, as trained (reference)", str(rounded), str(adapter))]
    scored += [(f"merged into {weights} weights, {dtype}", str(out), None) for (weights, dtype), out in merged.items()]
    rows = []
    for name, model, with_adapter in scored:
        rows.append((name, reply_loss(model, with_adapter, evals, a.max_seq_length)))
        print(json.dumps({"model": name, "held_out_reply_loss": rows[-1][1]}), flush=True)
    reference = rows[1][1]
    print(f"\n{'model':<44} {'held-out reply loss':>20} {'vs reference':>13}")
    for name, loss in rows:
        print(f"{name:<44} {loss:20.4f} {loss - reference:+13.4f}")


if __name__ == "__main__":
    main()
