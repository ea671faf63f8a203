"""Did the run learn: the eval loss of the base model and of the tuned one, and a few unseen questions answered by both.

Computed in the training child once the adapter is saved, on the eval split that the Data tab keeps
apart by default. The base model is the same network with the adapter switched off, so nothing is
loaded twice. The cost stays small on a CPU: at most ROWS rows for the loss, PROMPTS questions
answered greedily in at most ANSWER_TOKENS tokens. Written whole to RUN/learned.json; the panel
reads it back with `read`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core import models
from core.status import read_json, write_json
from core.template import reply_text

log = logging.getLogger("qlora_studio.train")

FILE = "learned.json"
ROWS = 64  # eval rows the loss is measured on, at most
PROMPTS = 3  # unseen questions answered by both models
ANSWER_TOKENS = 24  # the sample's replies take 13 to 16; a rambling base model stops here
SAME = 0.01  # a change of the eval loss under 1% is no change


def verdict(before: float | None, after: float | None) -> str:
    """better, worse or same: the tuned model's eval loss against the base model's."""
    if before is None or after is None:
        return "unknown"
    if after < before * (1 - SAME):
        return "better"
    if after > before * (1 + SAME):
        return "worse"
    return "same"


def summarize(model, tokenizer, template, eval_rows, eval_file: Path) -> dict:
    """Eval loss before and after, unseen questions answered by base and tuned, and the verdict."""
    rows = eval_rows.select(range(min(ROWS, len(eval_rows))))
    with model.disable_adapter():
        before = eval_loss(model, rows)
    after = eval_loss(model, rows)
    questions = held_out(eval_file, PROMPTS)
    prompts = [q["prompt"] for q in questions]
    stops = [s for s in template.stop_strings(tokenizer) if s]
    with model.disable_adapter():
        base = answers(model, tokenizer, prompts, stops)
    tuned = answers(model, tokenizer, prompts, stops)
    samples = [{"question": q["question"], "expected": reply_text(q["expected"], stops), "base": b, "tuned": t}
               for q, b, t in zip(questions, base, tuned, strict=True)]
    return {"eval_rows": len(rows), "eval_loss_before": before, "eval_loss_after": after,
            "verdict": verdict(before, after), "samples": samples}


def write(run: Path, summary: dict) -> None:
    write_json(Path(run) / FILE, summary)


def read(run: str | Path) -> dict:
    """RUN/learned.json ({} before the end of a run, or for a run without an eval split)."""
    return read_json(Path(run) / FILE)


def held_out(path: Path, n: int) -> list[dict]:
    """The first `n` eval rows as {question, prompt, expected}: the text up to the first reply, and that reply."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(out) == n:
                break
            try:
                row = json.loads(line)
                segments = row["segments"]
            except (ValueError, KeyError, TypeError):
                continue
            first = next((i for i, (_, trained) in enumerate(segments) if trained), None)
            if not first:  # no reply, or nothing before it to ask with
                continue
            prompt = "".join(text for text, _ in segments[:first])
            out.append({"question": row.get("question") or prompt, "prompt": prompt, "expected": segments[first][0]})
    return out


def eval_loss(model, rows) -> float | None:
    """Mean loss a reply token over tokenized rows (input_ids, completion_mask), as training counts it."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=device)
            mask = torch.tensor(row["completion_mask"][1:], device=device, dtype=torch.bool)
            if not mask.any():
                continue
            logits = model(input_ids=ids).logits[0, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total += float(losses[mask].sum())
            count += int(mask.sum())
    model.train(was_training)
    return round(total / count, 4) if count else None


def answers(model, tokenizer, prompts: list[str], stops: list[str]) -> list[str]:
    """Greedy answers, cut where the model starts another turn. All the prompts in one batch, padded on the left:
    one pass a token for all of them (on a GPU a few rows cost what one does), and the stop strings' tables built
    once."""
    import torch

    if not prompts:
        return []
    device = next(model.parameters()).device
    bos = models.leading_bos(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [([bos] if bos is not None else []) + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(x) for x in ids)
    batch = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        made = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=ANSWER_TOKENS, do_sample=False,
                              temperature=None, top_p=None, top_k=None, use_cache=True, pad_token_id=pad,
                              stop_strings=stops or None, tokenizer=tokenizer)
    model.train(was_training)
    out = []
    for row in made[:, width:].tolist():
        if pad in row:  # a row that ended before the others is filled with padding after its end
            row = row[: row.index(pad) + (1 if pad == tokenizer.eos_token_id else 0)]
        out.append(reply_text(tokenizer.decode(row, skip_special_tokens=False), stops))
    return out

