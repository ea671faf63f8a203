"""Does the faster default preset learn as well as the tutorial's? Same data, same tokens, one metric.

Prepares Belle-style rows with a held-out split, trains the embedded model once with the
tutorial preset and once with the default preset on the same number of training tokens,
and scores both adapters (and the base model) the same way: mean loss on the *reply* tokens
of the held-out rows, which is what a user cares about whatever each preset trains on.

    python bench/quality.py --data belle.jsonl [--steps 24] [--max-seq-length 256]

On a machine without a GPU both presets run plain LoRA in float32, so this compares the
recipes (packing, reply-only loss, batching), not 4-bit numerics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def reply_loss(model_dir: str, adapter: str | None, eval_file: Path, max_len: int) -> float:
    """Mean negative log-likelihood per reply token over a prepared eval.jsonl."""
    import torch
    from transformers import AutoModelForCausalLM

    from core import models

    tok = models.load_tokenizer(model_dir)
    net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter)
    net.eval()
    total, count = 0.0, 0
    for line in eval_file.read_text(encoding="utf-8").splitlines():
        ids, mask = [], []
        for text, trained in json.loads(line)["segments"]:
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            mask += [trained] * len(piece)
        ids, mask = ids[:max_len], mask[:max_len]
        with torch.no_grad():
            logits = net(input_ids=torch.tensor([ids])).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        keep = torch.tensor(mask[1:], dtype=torch.bool)
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total / max(count, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=24, help="tutorial steps; the default preset gets the same tokens")
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--work", default="")
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="quality-"))
    os.environ.setdefault("QLORA_STUDIO_HOME", str(work / "home"))
    from core import models
    from core.config import PrepareConfig, preset
    from core.data import prepare
    from core.train import train

    base = str(models.embedded())
    data = work / "data"
    if not data.is_dir():
        prepare(PrepareConfig(input=a.data, out=str(data), sample=1000, seed=42, eval_ratio=0.1,
                              max_seq_length=a.max_seq_length))
    common = dict(data=str(data), max_seq_length=a.max_seq_length, logging_steps=1, save_steps=0, seed=0)

    def run(name: str, steps: int) -> dict:
        t = time.time()
        done = work / name / "status.json"
        if done.is_file() and json.loads(done.read_text())["state"] == "finished":
            status = json.loads(done.read_text())  # a finished run of an earlier call: score it again
        else:
            status = train(preset(name, out=str(work / name), max_steps=steps, **common))
        lines = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
        return {"preset": name, "state": status["state"], "steps": steps, "tokens": lines[-1]["tokens"],
                "train_s": round(time.time() - t, 1), "adapter": status["adapter"]}

    results = [run("tutorial", a.steps)]
    # No more training tokens than the tutorial had: packed rows carry up to max_seq_length tokens
    # each, 16 rows an update.
    per_step = 16 * a.max_seq_length
    results.append(run("default", max(1, math.floor(results[0]["tokens"] / per_step))))
    scores = {"base": reply_loss(base, None, data / "eval.jsonl", a.max_seq_length)}
    for r in results:
        r["eval_reply_loss"] = scores[r["preset"]] = reply_loss(base, r["adapter"], data / "eval.jsonl", a.max_seq_length)
    print(json.dumps({"base_eval_reply_loss": scores["base"], "runs": results}, indent=1))
    print(f"\n{'preset':<10} {'steps':>5} {'tokens':>8} {'train s':>8} {'eval reply loss':>16}")
    print(f"{'base':<10} {'':>5} {'':>8} {'':>8} {scores['base']:16.4f}")
    for r in results:
        print(f"{r['preset']:<10} {r['steps']:5d} {r['tokens']:8d} {r['train_s']:8.1f} {r['eval_reply_loss']:16.4f}")


if __name__ == "__main__":
    main()
