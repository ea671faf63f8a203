"""GGUF export of a model shape: time, file sizes and peak memory, as the Merge tab runs it.

    python bench/export_size.py --shape 7b --tokenizer TOKDIR [--quant q8_0] [--work /tmp/export-bench]

It builds a randomly initialised Llama-shaped model in bf16 on the CPU (the values do not change the
cost of converting), saved as a merged model is (safetensors, the tokenizer, the run record that names
its template), then runs `python -m core export` as a child, as the panel does, sampling the child's
and its converter's anonymous resident memory (RssAnon) every 0.2 s. The export needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from merge_memory import timed  # noqa: E402 - bench/ is on the path from here


def build_cpu(shape: str, tokenizer_dir: str, out: Path) -> float:
    """The shape in bf16 on the CPU, filled with small random values, saved like a merged model; seconds."""
    import torch
    from speed import SHAPES
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core import models
    from core.template import Template

    start = time.time()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, rms_norm_eps=1e-5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=shape == "135m", **SHAPES[shape])
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # norms
            else:
                p.normal_(0, 0.02, generator=generator)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    models.write_record(out, {"base_model": f"random {shape}", "template": Template().to_dict()})
    return time.time() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="7b")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--quant", default="q8_0")
    p.add_argument("--work", default="/tmp/export-bench")
    a = p.parse_args()
    work = Path(a.work)
    model = work / f"model-{a.shape}"
    if not (model / "config.json").is_file():
        print(f"built {a.shape} in {build_cpu(a.shape, a.tokenizer, model):.0f} s", flush=True)
    weights = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    out = work / f"gguf-{a.shape}-{int(time.time())}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall, peak, text, code = timed([sys.executable, "-m", "core", "export", "--model", str(model), "--out", str(out),
                                    "--quant", a.quant], env)
    lines = text.splitlines()
    if code:
        raise SystemExit(f"export failed ({code}): " + "\n".join(lines[-20:]))
    report = json.loads(next(x for x in reversed(lines) if x.startswith("{")))
    print(f"# {os.cpu_count()} CPUs; {' '.join(sys.argv)}")
    print("| shape | safetensors (bf16) | export wall | peak anonymous RSS | file | size | share of F16 |")
    print("|---|---:|---:|---:|---|---:|---:|")
    f16 = next(f["bytes"] for f in report["files"] if f["kind"] == "f16") if report["files"] else None
    for f in report["files"]:
        share = f"{f['bytes'] / f16:.2f}" if f16 else ""
        print(f"| {a.shape} | {weights / 2**30:.2f} GiB | {wall:.0f} s | {peak / 1024:.2f} GiB | {f['kind']} | "
              f"{f['bytes']:,} B | {share} |")
    if report.get("skipped"):
        print(f"skipped: {report['skipped']}")


if __name__ == "__main__":
    main()
