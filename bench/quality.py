"""Does the faster default preset learn as well as the tutorial's? Same data, same tokens, one metric.

Prepares Belle-style rows with a held-out split, trains the embedded model once with the
tutorial preset and once with the default preset on the same number of training tokens,
and scores both adapters (and the base model) the same way: mean loss on the *reply* tokens
of the held-out rows, which is what a user cares about whatever each preset trains on.

    python bench/quality.py --data belle.jsonl [--steps 24] [--max-seq-length 256]

On a machine without a GPU both presets run plain LoRA in float32, so this compares the
recipes (packing, reply-only loss, batching), not 4-bit numerics.

    python bench/quality.py --data belle.jsonl --whole-job [--seed 0] [--presets tutorial,default] [--variant NAME:FLAGS]

runs the tutorial's whole job instead, each preset as its own `python -m core train` child
timed from start to saved adapter (bench/speed.py's runner): the tutorial preset as it is
(100 steps of 16 rows, 512 tokens) and the default preset over the same rows for the same
number of passes. On a GPU machine this is QLoRA proper (4-bit, fp16 and bf16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
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
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
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
            logits = net(input_ids=torch.tensor([ids], device=device)).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:], device=device), reduction="none")
        keep = torch.tensor(mask[1:], dtype=torch.bool, device=device)
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total / max(count, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=24, help="tutorial steps; the default preset gets the same tokens")
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--work", default="")
    p.add_argument("--whole-job", action="store_true", help="the tutorial's whole job, each preset a timed child process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[], help="name:flags, more default-preset runs (--whole-job)")
    p.add_argument("--presets", default="tutorial,default", help="which presets' whole jobs to run (--whole-job)")
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="quality-"))
    os.environ.setdefault("QLORA_STUDIO_HOME", str(work / "home"))
    from core import models
    from core.config import PrepareConfig, preset
    from core.data import prepare
    from core.train import train

    base = str(models.embedded())
    data = work / "data"
    if a.whole_job:
        a.max_seq_length = 512  # the tutorial's
    if not data.is_dir():
        prepare(PrepareConfig(input=a.data, out=str(data), sample=1000, seed=42, eval_ratio=0.1,
                              max_seq_length=a.max_seq_length))
    if a.whole_job:
        return whole_job(a, base, data, work)
    common = dict(data=str(data), max_seq_length=a.max_seq_length, logging_steps=1, save_steps=0, seed=a.seed)

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


def whole_job(a, base: str, data: Path, work: Path) -> None:
    """Both presets' whole jobs as child processes (start to saved adapter), then the same score."""
    from bench.speed import run, tutorial_passes

    passes = tutorial_passes(data)
    runs = work / "runs"
    common = ["--model", base, "--seed", str(a.seed)]
    same_rows = ["--max-steps", "0", "--epochs", f"{passes:g}"]
    preset_flags = {"tutorial": ["--preset", "tutorial", *common], "default": ["--preset", "default", *same_rows, *common]}
    results = [run(name, Path(base), data, runs, None, preset_flags[name], None) for name in filter(None, a.presets.split(","))]
    for v in a.variant:
        name, flags = v.split(":", 1)
        results.append(run(name, Path(base), data, runs, None,
                           ["--preset", "default", *same_rows, *common, *shlex.split(flags)], None))
    base_loss = reply_loss(base, None, data / "eval.jsonl", 512)
    for r in results:
        r["eval_reply_loss"] = reply_loss(base, str(runs / r["run"] / "adapter"), data / "eval.jsonl", 512)
    print(json.dumps({"base_eval_reply_loss": base_loss, "runs": results}, indent=1))
    print(f"\n{'run':<10} {'mode':<26} {'steps':>5} {'tokens':>8} {'wall s':>7} {'eval reply loss':>16}")
    print(f"{'base':<10} {'':<26} {'':>5} {'':>8} {'':>7} {base_loss:16.4f}")
    for r in results:
        print(f"{r['run']:<10} {r.get('mode') or '':<26} {r.get('steps', 0):5d} {r.get('tokens', 0):8d} "
              f"{r['wall_s']:7.1f} {r['eval_reply_loss']:16.4f}")


if __name__ == "__main__":
    main()
