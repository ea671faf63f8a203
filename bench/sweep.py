"""Many training runs of the embedded model at once on one GPU, each scored on held-out replies.

For comparing recipes and seeds (the default preset's learning rate and batch were chosen with it):

    python bench/sweep.py --data belle.jsonl --work WORK 'NAME:FLAGS' ['NAME:FLAGS' ...]

FLAGS are `python -m core train` flags; PASSES in them becomes the number of passes over the data
that the tutorial's 100 steps of 16 rows make. The data is prepared once into WORK/data the way
bench/quality.py does it (1000 rows, 10% held out, seed template, 512 tokens). The runs share the
GPU, so their times mean nothing; each prints its held-out reply loss (bench/quality.py's score).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="Belle-layout JSON lines")
    p.add_argument("--work", required=True)
    p.add_argument("runs", nargs="+", help="NAME:FLAGS")
    a = p.parse_args()
    work = Path(a.work)
    os.environ.setdefault("QLORA_STUDIO_HOME", str(work / "home"))
    from bench.quality import reply_loss
    from bench.speed import tutorial_passes
    from core import models
    from core.config import PrepareConfig
    from core.data import prepare

    base = str(models.embedded())
    data = work / "data"
    if not data.is_dir():
        prepare(PrepareConfig(input=a.data, out=str(data), sample=1000, seed=42, eval_ratio=0.1, max_seq_length=512))
    passes = tutorial_passes(data)
    procs = {}
    for spec in a.runs:
        name, flags = spec.split(":", 1)
        out = work / name
        cmd = [sys.executable, "-m", "core", "train", "--model", base, "--data", str(data), "--out", str(out),
               "--save-steps", "0", *shlex.split(flags.replace("PASSES", f"{passes:g}"))]
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.err", "w"))
    for name, proc in procs.items():
        proc.wait()
        status = json.loads((work / name / "status.json").read_text())
        metrics = work / name / "metrics.jsonl"
        lines = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        r = {"run": name, "state": status.get("state"), "err": status.get("error"),
             "steps": lines[-1]["step"] if lines else 0, "tokens": lines[-1]["tokens"] if lines else 0}
        if status.get("state") == "finished":
            r["eval"] = round(reply_loss(base, str(work / name / "adapter"), data / "eval.jsonl", 512), 4)
        print(json.dumps(r), flush=True)
    print("base", round(reply_loss(base, None, data / "eval.jsonl", 512), 4))


if __name__ == "__main__":
    main()
