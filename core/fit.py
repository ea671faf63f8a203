"""Will it fit: memory a model needs, read from its folder alone (no weights loaded).

Chat uses it to choose the precision a model loads in: 16-bit when the weights and the cache of
its context fit the GPU's free memory with a margin, else 8-bit, else 4-bit NF4, else a refusal
that says what it needs. The numbers come from the weight files' headers (parameter counts) and
config.json (layers, heads, context).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from core.errors import UserError

PRECISIONS = ("16bit", "8bit", "4bit")
MARGIN = 1.5 * 2**30  # the CUDA context, activations of one step, the allocator's slack
CONTEXT = 4096  # tokens of chat history the cache is sized for (or the model's own limit, if shorter)
NF4_BYTES = 0.5 + 0.0625  # 4 bits a weight, plus the scales (double quantization makes them smaller still)
INT4_BYTES = 0.5 + 4 / 128  # torchao int4: 4 bits a weight, a 16-bit scale and zero point per group of 128


def parameters(folder: str | Path) -> tuple[int, int]:
    """(all parameters, those of the embeddings and the LM head), from the weight files' headers."""
    from core.fold import shapes

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:  # pickle .bin weights: their size says enough (16-bit is the common case), without reading them
        return sum(p.stat().st_size for p in folder.glob("pytorch_model*.bin")) // 2, 0
    sizes = [(name, math.prod(shape)) for name, shape, _ in shapes(files)]
    return sum(n for _, n in sizes), sum(n for name, n in sizes if "embed" in name or "lm_head" in name)


def cache_bytes(folder: str | Path, tokens: int = CONTEXT) -> int:
    """The 16-bit key/value cache for `tokens` of context (capped at the model's own limit)."""
    try:
        c = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    c = c.get("text_config", c)
    heads = c.get("num_attention_heads") or 1
    head_dim = c.get("head_dim") or (c.get("hidden_size", 0) // heads)
    tokens = min(tokens, c.get("max_position_embeddings") or tokens)
    return 2 * (c.get("num_hidden_layers") or 0) * (c.get("num_key_value_heads") or heads) * head_dim * tokens * 2


def needs(folder: str | Path) -> dict[str, int]:
    """GPU bytes for chat in each precision: weights, the context's cache and a margin."""
    total, edges = parameters(folder)
    extra = cache_bytes(folder) + MARGIN
    body = total - edges  # bitsandbytes leaves the embeddings and the head in 16 bits
    return {"16bit": int(total * 2 + extra), "8bit": int(body + edges * 2 + extra),
            "4bit": int(body * NF4_BYTES + edges * 2 + extra), "int4": int(body * INT4_BYTES + edges * 2 + extra)}


def gpu_free() -> int:
    """Bytes this process may still take on GPU 0 (a per-process cap counts, as on a smaller card)."""
    import torch

    free, total = torch.cuda.mem_get_info(0)
    capped = int(torch.cuda.get_per_process_memory_fraction(0) * total) - torch.cuda.memory_reserved(0)
    return max(0, min(free, capped))


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def choose(folder: str | Path, free: int, asked: str = "auto") -> tuple[str, dict]:
    """(precision, the numbers behind it) for chatting with the model in `folder` on a GPU with `free` bytes."""
    need = needs(folder)
    info = {"asked": asked, "free": free, "need": need}
    if asked != "auto":
        if need[asked] > free:
            raise UserError(f"precision: {asked} needs about {gib(need[asked])} of GPU memory and {gib(free)} are "
                            "free; choose Auto or a smaller precision", field="precision")
        return asked, info
    for precision in PRECISIONS:
        if need[precision] <= free:
            return precision, info
    raise UserError(f"model: even in 4-bit this model needs about {gib(need['4bit'])} of GPU memory and "
                    f"{gib(free)} are free; stop training or unload the other chat model, or choose a smaller model",
                    field="model")


def words(precision: str, info: dict) -> str:
    """What was chosen and why, for a log or the command line ("8-bit: 16-bit needs 26.6 GiB, 23.5 GiB free")."""
    need, free = info["need"], info["free"]
    if info["asked"] != "auto":
        return f"{precision} as chosen ({gib(need[precision])} needed, {gib(free)} free)"  # int4 only when chosen
    if precision == "16bit":
        return f"16-bit: it needs {gib(need['16bit'])} and {gib(free)} are free"
    return f"{precision[:-3]}-bit: 16-bit needs {gib(need['16bit'])} and this GPU has {gib(free)} free"
