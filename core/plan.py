"""What a run's settings mean for a prepared dataset, before anything runs.

Read from the dataset's manifest alone (row lengths, counts), so the panel can answer as the
user types: how many updates, how many passes over the data, how many tokens an update holds.
"""

from __future__ import annotations

import math
from pathlib import Path

from core.data import read_manifest


def plan(folder: str | Path, batch_size: int, grad_accum: int, max_seq_length: int, packing: bool,
         max_steps: int, epochs: float) -> dict | None:
    """How far a run's settings go through a prepared dataset: updates, passes, tokens an update.

    From the row lengths in the manifest (each cut at max_seq_length): unpacked, an update holds
    batch x accumulation rows; packed, as many rows as fill batch x accumulation sequences of
    max_seq_length tokens. None when the folder is not a readable prepared dataset.
    """
    m = read_manifest(folder)
    try:
        rows, stats = int(m["counts"]["train"]), m["stats"]
    except (KeyError, TypeError, ValueError):
        return None
    lengths = stats.get("lengths") or []
    if lengths:
        row_tokens = sum(min(n, max_seq_length) for n in lengths) / len(lengths)
    else:  # a large dataset keeps only its histogram: the middle of each bin stands for its rows
        h = stats.get("histogram") or {}
        pairs = list(zip(h.get("starts", []), h.get("counts", []), strict=True))
        total = sum(c for _, c in pairs)
        if not total:
            return None
        row_tokens = sum(min(s + h["width"] / 2, max_seq_length) * c for s, c in pairs) / total
    if rows <= 0 or row_tokens <= 0:
        return None
    sequences = batch_size * grad_accum
    data_tokens = rows * row_tokens
    # An update never holds more than the whole dataset (a smaller one is one short batch a pass).
    per_update = min(sequences * max_seq_length if packing else sequences * row_tokens, data_tokens)
    if max_steps > 0:
        updates, passes = max_steps, max_steps * per_update / data_tokens
    else:
        updates, passes = max(1, math.ceil(epochs * data_tokens / per_update)), epochs
    template = m.get("template") or {}
    return {"updates": updates, "passes": round(passes, 2), "tokens_per_update": round(per_update),
            "rows_per_update": round(per_update / row_tokens, 1),
            "template": template.get("pattern") if template.get("name") == "custom" else template.get("name", "seed"),
            "template_why": m.get("template_why", "chosen")}


def share(batch_size: int, grad_accum: int, processes: int) -> tuple[int, int, float]:
    """Each process's batch and accumulation when `processes` train data-parallel, and the learning-rate factor.

    The settings describe one update and the processes share it, so a run on two GPUs makes the
    same updates as on one, faster. The accumulation is split first (the same rows a pass), then
    the batch. Where neither divides, each process takes the batch rounded up; the update grows,
    and the learning rate with the square root of its growth (the usual rule for Adam).
    """
    if processes <= 1:
        return batch_size, grad_accum, 1.0
    if grad_accum % processes == 0:
        return batch_size, grad_accum // processes, 1.0
    if batch_size % processes == 0:
        return batch_size // processes, grad_accum, 1.0
    each = -(-batch_size // processes)
    return each, grad_accum, math.sqrt(each * processes / batch_size)
# Real training tokens a second, measured with the default preset (docs/BENCHMARKS.md): on an
# H200 for three model sizes; on a CPU a core, for the embedded 135M model with the CPU-sized
# default (plain LoRA in float32 on every linear layer), on a quiet 2-core machine (140 tokens/s on both).
GPU_SPEEDS = {"H200": ((135e6, 19_043), (7e9, 12_360), (13e9, 6_688))}
CPU_SPEED_A_CORE = (135e6, 70.0)
START_SECONDS = 40  # loading the model, and checking what it learned at the end (a small model on a CPU)
LONG_SECONDS = 30 * 60  # a first run longer than this gets a warning


def seconds(tokens: float, params: int, device: str, cores: int = 1,
            measured: float | None = None) -> float | None:
    """About how long training `tokens` real tokens takes on `device` ("cpu" or a GPU's name), or None if unknown.

    `measured`: the tokens a second an earlier run of this model measured on this device (preferred to the table).
    """
    if measured:
        speed = measured
    elif device == "cpu":
        size, a_core = CPU_SPEED_A_CORE
        speed = a_core * max(cores, 1) * size / max(params, 1)  # the math grows with the parameters
    else:
        points = next((v for k, v in GPU_SPEEDS.items() if k.lower() in device.lower()), None)
        if points is None:
            return None
        speed = _between(points, params)
    return START_SECONDS + tokens / speed


def _between(points, params: float) -> float:
    """The speed at `params` from measured (size, speed) points: log-linear between them, 1/size beyond the last."""
    if params <= points[0][0]:
        return points[0][1]
    for (p0, s0), (p1, s1) in zip(points, points[1:], strict=False):
        if params <= p1:
            w = math.log(params / p0) / math.log(p1 / p0)
            return s0 + w * (s1 - s0)
    size, speed = points[-1]
    return speed * size / params
