"""How fast training turns prepared rows into token ids: `python bench/tokenize_speed.py --data PREPARED [--repeat 50]`.

PREPARED is a folder written by `python -m core prepare`. Its train.jsonl is read `--repeat` times over (a
file of that many times the rows), then tokenized twice in this process, side by side: the way training did
it before (one tokenizer call per segment of each row) and `core.trainer.tokenized` (one call per batch of
rows, which a fast tokenizer spreads over the cores). Both must give the same ids and masks. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def one_call_per_segment(path: Path, tokenizer, cfg) -> list[dict]:
    """The baseline: what core.trainer.tokenized did before batching."""
    from core import models

    bos = models.leading_bos(tokenizer)
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            ids, mask = ([bos], [0]) if bos is not None else ([], [])
            for text, trained in json.loads(line)["segments"]:
                piece = tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += piece
                mask += [1 if trained else 0] * len(piece)
            ids, mask = ids[: cfg.max_seq_length], mask[: cfg.max_seq_length]
            if cfg.loss_on == "response" and not any(mask):
                continue
            rows.append({"input_ids": ids, "completion_mask": mask})
    return rows


def main() -> None:
    import tokenizers
    import transformers

    from core import models, trainer
    from core.config import preset

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="a folder written by `python -m core prepare`")
    p.add_argument("--repeat", type=int, default=50, help="read the rows this many times over")
    a = p.parse_args()
    cfg = preset("default", data=a.data, out=tempfile.mkdtemp())
    tokenizer = models.load_tokenizer(cfg.model)
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(a.data, "train.jsonl").read_text(encoding="utf-8")
        path = Path(tmp) / "train.jsonl"
        path.write_text(rows * a.repeat, encoding="utf-8")
        n = sum(1 for line in rows.splitlines() if line.strip()) * a.repeat
        start = time.perf_counter()
        before = one_call_per_segment(path, tokenizer, cfg)
        old = time.perf_counter() - start
        start = time.perf_counter()
        now = trainer.tokenized(path, tokenizer, cfg)
        new = time.perf_counter() - start
    same = before == now.to_list()
    print(f"# {os.cpu_count()} CPUs; transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
          f"Python {sys.version.split()[0]}; RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}")
    print(f"# {' '.join(sys.argv)}")
    print("| rows | one call per segment | core.trainer.tokenized (batched) | ratio | same ids and masks |")
    print("|---:|---:|---:|---:|---|")
    print(f"| {n} | {old:.2f} s | {new:.2f} s | {old / new:.2f}x | {same} |")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
