"""How much an exported GGUF file answers like the model folder it came from.

For the model folder and each GGUF file (read back by transformers, which dequantizes Q8_0 and
Q4_0): the loss on a fixed text in English and Chinese, and for a few questions asked with the
model's chat template, how many greedy tokens of each reply come before the first that differs
from the folder's reply (once one differs, the rest follow another path).

    python bench/gguf_loss.py --model MODEL_DIR EXPORT/NAME-f16.gguf EXPORT/NAME-q8_0.gguf EXPORT/NAME-q4_0.gguf
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

TEXT = ("The quick brown fox jumps over the lazy dog. Machine learning models learn patterns from data, "
        "and a smaller copy of a model trades a little accuracy for a lot of memory. "
        "北京是中国的首都，也是一座历史悠久的城市。")
QUESTIONS = ("你是谁？", "Who are you?", "What is the capital of France?", "用一句话介绍一下长城。")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model folder the files were exported from")
    parser.add_argument("--tokens", type=int, default=16, help="greedy tokens of each reply")
    parser.add_argument("files", nargs="+", type=Path, help="GGUF files")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    text = tok(TEXT, return_tensors="pt").input_ids
    asks = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)["input_ids"] for q in QUESTIONS]

    def measure(model) -> tuple[float, list]:
        with torch.no_grad():
            loss = model(text, labels=text).loss.item()
            replies = [model.generate(ids, max_new_tokens=args.tokens, do_sample=False)[0, ids.shape[1]:].tolist()
                       for ids in asks]
        return loss, replies

    torch.manual_seed(0)
    reference, replies = measure(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval())
    print(f"{len(text[0])} tokens of text; {len(QUESTIONS)} questions, {args.tokens} greedy tokens each\n")
    print("| file | size | load | loss | vs the folder | greedy tokens as the folder's, before one differs |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| {Path(args.model).name} (float32) | | | {reference:.4f} | | |")
    for file in args.files:
        started = time.time()
        model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32).eval()
        load = time.time() - started
        loss, got = measure(model)
        same = sum(_shared_start(mine, theirs) for mine, theirs in zip(got, replies, strict=True))
        total = sum(len(r) for r in replies)
        print(f"| {file.name} | {file.stat().st_size / 2**20:.1f} MiB | {load:.1f} s | {loss:.4f} | "
              f"{loss - reference:+.4f} | {same} of {total} |")
        del model


def _shared_start(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


if __name__ == "__main__":
    main()
