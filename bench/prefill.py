"""The prompt pass in chunks: `python bench/prefill.py --shape 13b --precision int4 --tokenizer TOKDIR`.

The int4 chat path (torchao's tinygemm kernel) writes a token in about 7 ms on a 13B but reads a 524-token
prompt in 0.47 s: its kernel is made for a few rows at a time. This measures the prompt pass of one loaded
model (the way the Chat tab loads it, without the warm-up) whole and in chunks of --chunks rows, each chunk
one eager forward into the same static cache the decoder uses, and how far each chunked pass's last logits are
from the whole pass's (a chunked pass reads the same tokens; its sums come in another order). Same prompt as
bench/chat_speed.py (two earlier turns and a message, about --tokens tokens). Prints one table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="135m", help="135m (the embedded model), 7b or 13b (random, built on the GPU)")
    p.add_argument("--precision", default="int4")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--chunks", default="16,32,64,128,256")
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--work", default="/tmp/chat-speed")
    a = p.parse_args()

    import torch
    from chat_speed import model_for, prompt, versions
    from transformers import StaticCache

    from core.chat import Chat, cache_tokens

    cuda = torch.cuda.is_available()
    chat = Chat()
    chat.load(model_for(a.shape, a.tokenizer, Path(a.work)), precision=a.precision if cuda else "auto", compile=False)
    history, message = prompt(chat.tokenizer, a.tokens)
    text = chat.template.prompt("", history, message, chat.tokenizer)
    ids = chat.tokenizer(text, return_tensors="pt")["input_ids"].to(chat.model.device)
    n = ids.shape[1]
    cache = StaticCache(config=chat.model.config, max_cache_len=cache_tokens(chat.model))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def prefill(chunk: int):
        cache.reset()
        logits = None
        with torch.no_grad():
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                logits = chat.model(input_ids=ids[:, start:end], use_cache=True, logits_to_keep=1,
                                    position_ids=torch.arange(start, end, device=ids.device)[None],
                                    past_key_values=cache).logits[:, -1, :].float()
        return logits

    rows = []
    reference = None
    for chunk in [n, *(int(c) for c in a.chunks.split(","))]:
        times = []
        for _ in range(a.repeat + 1):  # the first of each size is a warm-up (kernels picked, memory taken)
            sync()
            start = time.perf_counter()
            logits = prefill(chunk)
            sync()
            times.append(time.perf_counter() - start)
        if reference is None:
            reference = logits
        gap = (logits - reference).abs().max().item() / max(reference.abs().max().item(), 1e-9)
        same = int(logits.argmax()) == int(reference.argmax())
        rows.append((chunk, min(times[1:]), gap, same))
    print(f"# {versions()}\n# {' '.join(sys.argv)}; prompt {n} tokens, {chat.description}")
    print("| rows a pass | prompt pass | vs whole | last logits' gap (of the largest) | same next token |")
    print("|---:|---:|---:|---:|---|")
    for chunk, seconds, gap, same in rows:
        print(f"| {'whole' if chunk == n else chunk} | {seconds:.3f} s | {rows[0][1] / seconds:.2f}x | {gap:.1e} | {same} |")
    chat.close()


if __name__ == "__main__":
    main()
