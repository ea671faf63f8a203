"""Merge memory and time on a real shape: `python bench/merge_memory.py --shape 13b --tokenizer TOKDIR`.

Builds a randomly initialised model of the shape (bf16, shards of 10 GB like published 13B
checkpoints) and a LoRA adapter (r64 on q_proj and v_proj, random A and B), then merges it with
`python -m core merge --no-compare` on the CPU only (CUDA_VISIBLE_DEVICES=""; the check against
base + adapter needs both models in memory and runs only where they fit), sampling the child's anonymous
resident memory (RssAnon: the file pages the OS can drop do not count) every 0.1 s. Side by side,
in the same call: the time to copy the base's weight files on the same disk. Prints one table.

Where the installed packages have no bytecode (the GPU test machine), compile them first, as pip does at
install, or every merge also times Python compiling torch's source: `PYTHONPYCACHEPREFIX=/tmp/pyc python -m
compileall -q -j 16 SITE_PACKAGES` and keep PYTHONPYCACHEPREFIX set (docs/BENCHMARKS.md).
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
    config = LlamaConfig(max_position_embeddings=4096, **SHAPES[shape])
    if torch.cuda.is_available():  # drawn on the GPU: seconds, where one CPU thread takes minutes for a 13B
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
    else:
        generator = torch.Generator().manual_seed(0)
        with torch.device("meta"):  # straight to bf16 storage: a float32 7B would not fit a 24 GiB machine's RAM
            model = LlamaForCausalLM(config)
        model = model.to_empty(device="cpu").to(torch.bfloat16)
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0) if p.dim() == 1 else p.normal_(0, 0.02, generator=generator)
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


def peft_child(base: str, lora: str, out: str, dtype: str) -> None:
    """The merge as the tutorial does it, for comparison: the whole model loaded, peft's merge_and_unload, saved."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, lora).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True, max_shard_size="2GB")


def timed(argv: list[str], env: dict) -> tuple[float, float, str, int]:
    """(seconds, peak anonymous RSS in MiB of the child and its own children, output, exit code); the output goes
    to a file, not a pipe (a converter that writes a line per tensor would fill a pipe and wait)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as sink:
        t = time.time()
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, sum(anon_mib(x) for x in tree(child.pid)))
            time.sleep(0.1)
        seconds = time.time() - t
        sink.seek(0)
        return seconds, peak, sink.read(), child.returncode


def tree(pid: int) -> list[int]:
    """The pid and its descendants (the export runs the converter as its child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for child in Path(f"/proc/{p}/task/{p}/children").read_text().split():
                todo.append(int(child))
        except OSError:
            pass
    return out


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
    parser.add_argument("--peft", action="store_true", help="also merge with peft's merge_and_unload on the whole model")
    parser.add_argument("--variants", default="", help="instead: writing thread counts to time side by side (1,4), "
                        "each merge right after a timed copy")
    parser.add_argument("--rounds", type=int, default=2, help="with --variants: how many times each")
    parser.add_argument("--peft-child", nargs=3, metavar=("BASE", "ADAPTER", "OUT"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.peft_child:
        peft_child(*a.peft_child, a.dtype)
        return
    work = Path(a.work)
    base, lora, out = work / f"{a.shape}-base", work / f"{a.shape}-adapter", work / f"{a.shape}-merged"
    t = time.time()
    build(a.shape, base, a.tokenizer)
    adapter(base, lora)
    print(f"built in {time.time() - t:.0f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    for stale in work.glob(f".{out.name}*"):
        shutil.rmtree(stale, ignore_errors=True)

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    if a.variants:
        variants(a, base, lora, out, env)
        return
    copied = copy_time(base, work)
    merged, peak, text, code = timed([sys.executable, "-m", "core", "merge", "--adapter", str(lora), "--base", str(base),
                                      "--out", str(out), "--dtype", a.dtype, "--no-compare"], env)
    report = json.loads(text.strip().splitlines()[-1]) if code == 0 else {"error": text[-2000:]}
    size = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**30
    rows = [("ours: tensor by tensor", merged, peak, report.get("shards"), report.get("merged_tensors"))]
    if a.peft:
        shutil.rmtree(out)  # ours is measured: its room on the disk goes to peft's (a 13B would need 76 GiB at once)
        theirs = work / f"{a.shape}-merged-peft"
        shutil.rmtree(theirs, ignore_errors=True)
        seconds, peak_peft, text, code = timed([sys.executable, __file__, "--peft-child", str(base), str(lora),
                                                str(theirs), "--dtype", a.dtype, "--tokenizer", a.tokenizer], env)
        if code:
            print(f"peft's merge failed ({code}): {text[-1500:]}")
        rows.append(("peft merge_and_unload, whole model", seconds, peak_peft,
                     len(list(theirs.glob("*.safetensors"))), None))
        shutil.rmtree(theirs, ignore_errors=True)
    print(f"\n# {os.cpu_count()} CPUs, no GPU used; {' '.join(sys.argv)}")
    print("| shape | method | base weights | copy the files | merge (whole command) | ratio | peak anonymous RSS | shards | tensors merged |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, seconds, mib, shards, tensors in rows:
        print(f"| {a.shape} | {name} | {size:.1f} GiB | {copied:.1f} s | {seconds:.1f} s | {seconds / copied:.2f}x | "
              f"{mib / 1024:.2f} GiB | {shards} | {tensors if tensors is not None else ''} |")
    print(json.dumps({k: report.get(k) for k in ("ok", "method", "compared", "finite", "size_gb", "seconds", "error")}))


def copy_time(base: Path, work: Path) -> float:
    """Seconds to copy the base's weight files once, on the same disk (the yardstick)."""
    copy = work / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    t = time.time()
    for f in base.glob("*.safetensors"):
        shutil.copyfile(f, copy / f.name)
    seconds = time.time() - t
    shutil.rmtree(copy)
    return seconds


def variants(a, base: Path, lora: Path, out: Path, env: dict) -> None:
    """core.fold's writing threads (WRITERS), each count in turn, --rounds times; every merge right after a timed copy
    of the base's files, each step after the last one's files are deleted and the disk has written what was left."""
    rows = []
    for _ in range(a.rounds):
        for writers in a.variants.split(","):
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            copied = copy_time(base, Path(a.work))
            os.sync()
            seconds, peak, text, code = timed([sys.executable, "-m", "core", "merge", "--adapter", str(lora), "--base",
                                               str(base), "--out", str(out), "--dtype", a.dtype, "--no-compare"],
                                              {**env, "QLORA_STUDIO_MERGE_WRITERS": writers})
            report = json.loads(text.strip().splitlines()[-1]) if code == 0 else {"error": text[-800:]}
            rows.append((writers, copied, seconds, report.get("seconds"), peak, report.get("error")))
            print(rows[-1], flush=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"\n# {os.cpu_count()} CPUs, no GPU used; {' '.join(sys.argv)}")
    print("| writing threads | copy the files (just before) | merge, whole command | merge itself | ratio | "
          "peak anonymous RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    for writers, copied, seconds, inside, mib, error in rows:
        print(f"| {writers} | {copied:.1f} s | {seconds:.1f} s | {inside} s | {seconds / copied:.2f}x | {mib / 1024:.2f} GiB |"
              + (f" {error}" if error else ""))


if __name__ == "__main__":
    main()
