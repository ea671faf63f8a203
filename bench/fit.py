"""The fit check's estimates against real peaks on a GPU: training (both presets) and chat (each precision).

For each shape it builds a randomly initialised Llama-shaped model (bench/speed.py's `build`),
trains it a few steps with `python -m core train --preset P` as the panel does and reads the
peak GPU memory from metrics.jsonl (torch's max_memory_allocated), then loads it for chat in
each precision in a fresh child and answers a prompt that fills the context the estimate is sized
for (core.fit.CONTEXT tokens). It prints one table: estimate, real peak, and their ratio.

    python bench/fit.py --data belle.jsonl --tokenizer TOKDIR --shapes 135m,7b,13b [--steps 4]

The training estimate is core.fit.train_needs(...)["peak"] (without the CUDA context, as the
metrics count); the chat estimate is core.fit.needs(...) less its margin (core.fit.MARGIN).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def chat_peak(model: str, precision: str) -> dict:
    """In this process (a fresh child): load in `precision`, answer a context-long prompt, the peak in GiB."""
    import time

    import torch

    from core import fit
    from core.chat import Chat
    from core.config import GenerationConfig

    chat = Chat()
    start = time.perf_counter()
    chat.load(model, precision=precision)
    load_s = time.perf_counter() - start  # weights to the GPU and the compiled warm-up, as the Chat tab's Load
    tokens = min(fit.CONTEXT, fit.read_config(model).get("max_position_embeddings") or fit.CONTEXT) - 64
    prompt = " ".join(["你好"] * tokens)
    ids = chat.tokenizer(prompt)["input_ids"][:tokens]
    prompt = chat.tokenizer.decode(ids)
    torch.cuda.reset_peak_memory_stats()
    chat.reply([], prompt, GenerationConfig(temperature=0, max_new_tokens=16))
    peak = torch.cuda.max_memory_allocated()
    chat.close()
    return {"peak_gib": peak / 2**30, "precision": chat.fitted.get("precision", precision), "load_s": load_s,
            "warmup_s": chat.warmup_s}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", help="Belle-layout JSON lines (for training)")
    p.add_argument("--tokenizer", help="folder with the tokenizer to carry")
    p.add_argument("--shapes", default="135m,7b,13b")
    p.add_argument("--presets", default="tutorial,default")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--work", default="/tmp/bench")
    p.add_argument("--chat-child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.chat_child:
        print(json.dumps(chat_peak(*a.chat_child)), flush=True)
        return
    work = Path(a.work)
    os.environ.setdefault("QLORA_STUDIO_HOME", str(work / "home"))
    from speed import run, shape_inputs

    from core import fit
    from core.config import TrainConfig, preset

    rows = []
    for shape in a.shapes.split(","):
        model, data = shape_inputs(shape, a.tokenizer, a.data, work)
        config = fit.read_config(model)
        for name in a.presets.split(",") if a.data else ():
            r = run(f"fit-{shape}-{name}", model, data, work / "runs", a.steps, ["--preset", name], None)
            cfg: TrainConfig = preset(name, data=str(data), out="x")
            estimate = fit.train_needs(config, cfg, cuda=True, liger=fit.liger_installed())["peak"] / 2**30
            rows.append((shape, f"train {name}", estimate, r.get("peak_gib")))
        need = fit.needs(model)
        for precision in fit.PRECISIONS:
            proc = subprocess.run([sys.executable, __file__, "--chat-child", str(model), precision], cwd=ROOT,
                                  capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
            got = json.loads(lines[-1]) if lines else {}
            real = got.get("peak_gib")
            if real is None:
                print(proc.stderr[-1500:], flush=True)
            else:
                print(f"{shape} chat {precision}: load {got['load_s']:.1f} s (warm-up {got['warmup_s'] or 0:.1f} s)",
                      flush=True)
            rows.append((shape, f"chat {precision}", (need[precision] - fit.MARGIN) / 2**30, real))
    print(f"\n{'shape':<6} {'job':<16} {'estimate GiB':>12} {'real peak GiB':>13} {'estimate/real':>13}")
    for shape, job, estimate, real in rows:
        ratio = f"{estimate / real:.2f}" if real else "-"
        print(f"{shape:<6} {job:<16} {estimate:12.2f} {real if real is not None else float('nan'):13.2f} {ratio:>13}")


if __name__ == "__main__":
    main()
