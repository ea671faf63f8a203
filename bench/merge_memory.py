"""Merge memory and time on a real shape: `python bench/merge_memory.py --shape 13b --tokenizer TOKDIR`.

Builds a randomly initialised model of the shape (bf16, shards of 10 GB like published 13B
checkpoints) and a LoRA adapter (r64 on q_proj and v_proj, random A and B), then merges it with
`python -m core merge --no-compare` on the CPU only (CUDA_VISIBLE_DEVICES=""; the check against
base + adapter needs both models in memory and runs only where they fit), sampling the child's anonymous
resident memory (RssAnon: the file pages the OS can drop do not count) every 0.1 s. Side by side,
in the same call: the time to copy the base's weight files on the same disk. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}


def build(shape: str, folder: Path, tokenizer: str) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=4096, **SHAPES[shape])).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="10GB")
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    del model


def adapter(base: Path, folder: Path, r: int = 64) -> None:
    """A LoRA adapter laid out as peft saves it, with random A and B (so every delta is real)."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((base / "config.json").read_text())
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = h * config["num_key_value_heads"] // config["num_attention_heads"]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    tensors = {}
    for i in range(layers):
        for proj, out in (("q_proj", h), ("v_proj", kv)):
            stem = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{stem}.lora_A.weight"] = torch.randn(r, h) * 0.01
            tensors[f"{stem}.lora_B.weight"] = torch.randn(out, r) * 0.01
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": str(base), "task_type": "CAUSAL_LM", "bias": "none"}))


def anon_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="13b", choices=list(SHAPES))
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--work", default="/tmp/merge-bench")
    parser.add_argument("--dtype", default="float16")
    a = parser.parse_args()
    work = Path(a.work)
    base, lora, out = work / f"{a.shape}-base", work / f"{a.shape}-adapter", work / f"{a.shape}-merged"
    t = time.time()
    build(a.shape, base, a.tokenizer)
    adapter(base, lora)
    print(f"built in {time.time() - t:.0f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    for stale in work.glob(f".{out.name}*"):
        shutil.rmtree(stale, ignore_errors=True)

    copy = work / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    t = time.time()
    for f in base.glob("*.safetensors"):
        shutil.copyfile(f, copy / f.name)
    copied = time.time() - t
    shutil.rmtree(copy)

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    t = time.time()
    child = subprocess.Popen([sys.executable, "-m", "core", "merge", "--adapter", str(lora), "--base", str(base),
                              "--out", str(out), "--dtype", a.dtype, "--no-compare"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    while child.poll() is None:
        peak = max(peak, anon_mib(child.pid))
        time.sleep(0.1)
    merged = time.time() - t
    text = child.stdout.read()
    report = json.loads(text.strip().splitlines()[-1]) if child.returncode == 0 else {"error": text[-2000:]}
    size = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**30
    print("\n| shape | base weights | copy the files | merge (CPU only) | ratio | peak anonymous RSS | shards | tensors merged |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {a.shape} | {size:.1f} GiB | {copied:.1f} s | {merged:.1f} s | {merged / copied:.2f}x | {peak / 1024:.2f} GiB "
          f"| {report.get('shards')} | {report.get('merged_tensors')} |")
    print(json.dumps({k: report.get(k) for k in ("ok", "method", "compared", "finite", "size_gb", "seconds", "error")}))


if __name__ == "__main__":
    main()
