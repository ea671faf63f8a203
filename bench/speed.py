"""Training speed and memory: the tutorial preset against ours, side by side, on one GPU.

For each model shape it builds a randomly initialised Llama-shaped model on the GPU (the
weights do not change the cost of a step), prepares Belle-style rows the tutorial's way,
and runs `python -m core train` once per preset, a few optimizer steps each, exactly as the
panel would. It reads the runs' metrics.jsonl and prints one table.

    python bench/speed.py --data belle.jsonl --tokenizer TOKDIR --shapes 13b,7b --steps 8 \
        [--budget 13b=12,7b=8] [--variant 'b8:--batch-size 8 --grad-accum 2']

--budget caps the default preset's GPU memory (torch.cuda.set_per_process_memory_fraction)
to show it fits; --variant adds runs of the default preset with other flags.

--whole-job runs the tutorial's whole job instead of a few steps: the tutorial preset as it
is (100 steps of 16 rows, logging every 10), and the default preset over the same data for
the same number of passes (100 x 16 rows / 1000 rows = 1.6 epochs), each from process start
to saved adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
}


def build(shape: str, tokenizer_dir: str, out: Path) -> float:
    """A random bf16 model of `shape` saved as safetensors with the given tokenizer; returns seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    t = time.time()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, rms_norm_eps=1e-5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=shape == "135m", **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return time.time() - t


def shape_inputs(shape: str, tokenizer: str, rows: str | None, work: Path) -> tuple[Path, Path]:
    """(model, prepared data) for a shape under `work`, each made once: the random model, and the tutorial's
    data step on `rows` (1000 random rows, seed template, this model's tokenizer) when rows are given."""
    from core.config import PrepareConfig
    from core.data import prepare

    model, data = work / f"model-{shape}", work / f"data-{shape}"
    if not (model / "config.json").is_file():
        print(f"built {shape} in {build(shape, tokenizer, model):.0f} s", flush=True)
    if rows and not data.is_dir():
        prepare(PrepareConfig(input=rows, out=str(data), sample=1000, seed=42, template="seed", model=str(model)))
    return model, data


def tutorial_passes(data: Path) -> float:
    """How many passes over a prepared dataset the tutorial's job makes (100 steps of 4 x 4 rows)."""
    from core.config import preset

    t = preset("tutorial")
    rows = json.loads((data / "manifest.json").read_text())["counts"]["train"]
    return t.max_steps * t.batch_size * t.grad_accum / rows


def run(name: str, model: Path, data: Path, runs: Path, steps: int | None, flags: list[str], budget_gib: float | None) -> dict:
    """One `python -m core train` child; its metrics and wall time (steps=None: the preset's own length)."""
    out = runs / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable]
    if budget_gib:
        cmd += [str(ROOT / "bench" / "budget.py"), str(budget_gib)]
    cmd += ["-m", "core", "train", "--model", str(model), "--data", str(data), "--out", str(out), "--save-steps", "0"]
    if steps is not None:
        cmd += ["--max-steps", str(steps), "--logging-steps", "1"]
    cmd += flags
    t = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").is_file() else {}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").is_file() else []
    res = {"run": name, "state": status.get("state"), "error": status.get("error"), "wall_s": round(wall, 1), "mode": status.get("mode")}
    if proc.returncode != 0 and not lines:
        res["log_tail"] = (proc.stdout + proc.stderr)[-1500:]
    if len(lines) >= 3:
        a, b = lines[1], lines[-1]  # step 1 is the warm-up (allocations, kernel compilation)
        dt = b["time"] - a["time"]
        res.update(
            s_per_step=dt / (b["step"] - a["step"]),
            tokens_per_s=(b["tokens"] - a["tokens"]) / dt,
            tokens_per_step=(b["tokens"] - a["tokens"]) / (b["step"] - a["step"]),
            peak_gib=max(x.get("gpu_memory_gb") or 0 for x in lines),
            first_step_at_s=lines[0]["time"] - t,  # start to first step: process start, model load, tokenizing
            loss=[round(lines[0]["loss"], 3), round(lines[-1]["loss"], 3)],
            steps=lines[-1]["step"],
            tokens=lines[-1]["tokens"],
            adapter=(out / "adapter" / "adapter_model.safetensors").is_file(),
        )
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="Belle-layout JSON lines")
    p.add_argument("--tokenizer", required=True, help="folder with the tokenizer to carry")
    p.add_argument("--shapes", default="13b")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--budget", default="", help="shape=GiB,... cap for the default preset")
    p.add_argument("--variant", action="append", default=[], help="name:flags for extra default-preset runs")
    p.add_argument("--presets", default="tutorial,default")
    p.add_argument("--work", default="/tmp/bench")
    p.add_argument("--whole-job", action="store_true", help="the tutorial's whole job, start to saved adapter")
    a = p.parse_args()
    budgets = dict((k, float(v)) for k, v in (x.split("=") for x in a.budget.split(",") if x))
    work = Path(a.work)
    os.environ.setdefault("QLORA_STUDIO_HOME", str(work / "home"))
    table = []
    for shape in a.shapes.split(","):
        model, data = shape_inputs(shape, a.tokenizer, a.data, work)
        for name in filter(None, a.presets.split(",")):  # --presets "": the variants alone, in their order
            budget = budgets.get(shape) if name == "default" else None
            steps, flags = a.steps, ["--preset", name]
            if a.whole_job:
                steps = None
                if name != "tutorial":
                    flags += ["--max-steps", "0", "--epochs", f"{tutorial_passes(data):g}"]
            table.append((shape, run(f"{shape}-{name}", model, data, work / "runs", steps, flags, budget)))
        for v in a.variant:
            name, flags = v.split(":", 1)
            table.append((shape, run(f"{shape}-{name}", model, data, work / "runs", a.steps,
                                     ["--preset", "default", *shlex.split(flags)], budgets.get(shape))))
    print(f"\n{'run':<22} {'state':<9} {'s/step':>7} {'tok/s':>8} {'tok/step':>9} {'peak GiB':>9} {'1st step s':>10}  vs tutorial"
          f"   {'wall s':>7} {'steps':>5} {'tokens':>8}  wall vs tutorial")
    for shape, r in table:
        base = next((x for s, x in table if s == shape and x["run"].endswith("-tutorial") and "tokens_per_s" in x), None)
        ratio = f"x{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base and "tokens_per_s" in r else ""
        wall = f"x{base['wall_s'] / r['wall_s']:.2f}" if base and "tokens_per_s" in r else ""
        if "tokens_per_s" in r:
            print(f"{r['run']:<22} {r['state']:<9} {r['s_per_step']:7.2f} {r['tokens_per_s']:8.0f} {r['tokens_per_step']:9.0f} "
                  f"{r['peak_gib']:9.2f} {r['first_step_at_s']:10.1f}  {ratio:>11}   {r['wall_s']:7.1f} {r['steps']:5d} "
                  f"{r['tokens']:8d}  {wall}")
        else:
            print(f"{r['run']:<22} {r['state'] or '-':<9} {r.get('error') or ''}")


if __name__ == "__main__":
    main()
