"""Which training knobs buy speed for QLoRA on a big model? One model load, several recipes.

Builds a randomly initialised Llama-2-shaped model on the GPU (weights do not change the
cost), loads it in 4-bit NF4 once, and for each variant trains a few optimizer steps with
trl's SFTTrainer on Belle-style rows, printing real (non-pad) tokens/s and peak memory.

    python bench/variants.py --shape 13b --data DATA.jsonl --tokenizer TOKDIR --steps 6
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speed import build  # noqa: E402  (bench/ is on the path when run as a script)

from core.packing import Counting as Count  # noqa: E402


def run(name, model_dir, tok, rows, *, dtype, packing, batch, accum, steps, liger=False, gc_on=True, compile_=False, optim="adamw_torch", lora_dropout=0.1):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t_load = time.time()
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, device_map={"": 0}, dtype=dtype, attn_implementation="sdpa")
    t_load = time.time() - t_load
    ds = Dataset.from_list([{"text": r} for r in rows])
    args = SFTConfig(
        output_dir=f"/tmp/out-{name}", per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        learning_rate=2e-4, max_steps=steps, logging_steps=1, save_strategy="no", report_to=[],
        fp16=dtype == torch.float16, bf16=dtype == torch.bfloat16, max_length=512, packing=packing,
        padding_free=packing, gradient_checkpointing=gc_on, use_liger_kernel=liger, optim=optim,
        dataloader_num_workers=0, seed=0, torch_compile=compile_,
    )
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=lora_dropout, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    counter = Count(trainer.data_collator)
    trainer.data_collator = counter
    marks = []

    class Clock(TrainerCallback):
        def on_substep_end(self, *a, **k):
            counter.consumed()

        def on_step_end(self, *a, **k):
            counter.consumed()
            torch.cuda.synchronize()
            marks.append((time.time(), counter.tokens))

    trainer.add_callback(Clock())
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30
    (t0, n0), (t1, n1) = marks[1], marks[-1]  # first step is warm-up
    res = dict(variant=name, s_per_step=(t1 - t0) / (len(marks) - 2), tokens_per_s=(n1 - n0) / (t1 - t0),
               tokens_per_step=(n1 - n0) / (len(marks) - 2), peak_gib=peak, load_s=t_load,
               loss=[round(h["loss"], 3) for h in trainer.state.log_history if "loss" in h][-1:])
    print(json.dumps(res), flush=True)
    del trainer, model
    gc.collect()
    torch.cuda.empty_cache()
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="13b")
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--only", default="")
    a = p.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    tok.pad_token = tok.pad_token or tok.eos_token
    rows = []
    for line in open(a.data, encoding="utf-8"):
        r = json.loads(line)
        rows.append(f"### Human: {r['instruction']} ### Assistant: {r['output']}")
    model_dir = Path(f"/tmp/rand-{a.shape}")
    print(f"built {a.shape} in {build(a.shape, a.tokenizer, model_dir):.0f}s", flush=True)
    fp16, bf16 = torch.float16, torch.bfloat16
    variants = {
        "tutorial": dict(dtype=fp16, packing=False, batch=4, accum=4),
        "bf16_pack": dict(dtype=bf16, packing=True, batch=4, accum=4),
        "bf16_pack_liger": dict(dtype=bf16, packing=True, batch=4, accum=4, liger=True),
        "bf16_pack_liger_b8": dict(dtype=bf16, packing=True, batch=8, accum=2, liger=True),
        "bf16_pack_liger_b16": dict(dtype=bf16, packing=True, batch=16, accum=1, liger=True),
    }
    only = [v for v in a.only.split(",") if v]
    out = []
    for name, kw in variants.items():
        if only and name not in only:
            continue
        try:
            out.append(run(name, model_dir, tok, rows, steps=a.steps, **kw))
        except Exception as e:  # keep going: one failing variant must not lose the others
            print(json.dumps(dict(variant=name, error=f"{type(e).__name__}: {str(e)[:300]}")), flush=True)
            gc.collect()
            torch.cuda.empty_cache()
    print("\nvariant                      s/step  tok/s   tok/step  peak GiB  load s")
    base = out[0]["tokens_per_s"] if out else 1
    for r in out:
        print(f"{r['variant']:<28} {r['s_per_step']:6.2f} {r['tokens_per_s']:7.0f} {r['tokens_per_step']:8.0f} {r['peak_gib']:8.2f} {r['load_s']:6.0f}  x{r['tokens_per_s'] / base:.2f}")


if __name__ == "__main__":
    main()
