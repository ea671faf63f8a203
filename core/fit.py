"""Will it fit: memory a model needs, read from its folder alone (no weights loaded).

Chat uses it to choose the precision a model loads in: 16-bit when the weights and the cache of
its context fit the GPU's free memory with a margin, else 8-bit, else 4-bit NF4, else a refusal
that says what it needs. The numbers come from the weight files' headers (parameter counts) and
config.json (layers, heads, context).

Before a job starts, `train_needs`, `merge_needs` and `chat_needs` estimate the GPU and host
memory of a training run, a merge and a chat from config.json alone and the job's settings;
`judge` puts an estimate against what the machine has free ("fits", "tight", "no") and
`remedies` finds the settings that would fit. The constants are calibrated against the peaks
measured in docs/BENCHMARKS.md; each says where it comes from.
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


def training_needs(folder: str | Path) -> int:
    """GPU bytes a run of the default preset needs on the model in `folder`: train_needs, for the Models list."""
    from core.config import preset

    return train_needs(read_config(folder), preset("default"), cuda=True, liger=liger_installed())["gpu"]


def gpu_free(index: int = 0) -> int:
    """Bytes this process may still take on GPU `index` (a per-process cap counts, as on a smaller card)."""
    import torch

    free, total = torch.cuda.mem_get_info(index)
    capped = int(torch.cuda.get_per_process_memory_fraction(index) * total) - torch.cuda.memory_reserved(index)
    return max(0, min(free, capped))


def spread(free: dict[int, int], need: int, weights: int) -> dict[int, int] | None:
    """Each GPU's share of the weights when a chat model is spread over several (transformers' `max_memory`).

    `free`: bytes free on each chosen GPU; `need`: the whole job's bytes (core.fit.needs: the weights, the
    context's cache and a margin); `weights`: the weights' part of it. The rest (cache, margin) goes with the
    layers, so each GPU keeps the same share of it free as it takes of the weights, and each extra GPU keeps
    one more margin (its own CUDA context and workspace). None when the GPUs together are too small.
    """
    rest = need - weights + MARGIN * (len(free) - 1)
    total = sum(free.values())
    if total < weights + rest:
        return None
    room = 1 - rest / total  # the share of each GPU's free memory the weights may fill
    return {index: int(bytes_ * room) for index, bytes_ in free.items()}


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def choose(folder: str | Path, free: int, asked: str = "auto") -> tuple[str, dict]:
    """(precision, the numbers behind it) for chatting with the model in `folder` on a GPU with `free` bytes."""
    need = needs(folder)
    info = {"asked": asked, "free": free, "need": need}
    if asked != "auto":
        if need[asked] > free:
            raise UserError(f"precision: {asked} needs about {gib(need[asked])} of GPU memory and {gib(free)} are "
                            "free; choose Auto or a smaller precision", field="precision",
                            zh=f"precision：{asked} 约需 {gib(need[asked])} 显存，只剩 {gib(free)}；请选“自动”或更小的精度")
        return asked, info
    for precision in PRECISIONS:
        if need[precision] <= free:
            return precision, info
    raise UserError(f"model: even in 4-bit this model needs about {gib(need['4bit'])} of GPU memory and "
                    f"{gib(free)} are free; stop training or unload the other chat model, or choose a smaller model",
                    field="model", zh=f"model：即使用 4-bit，这个模型也约需 {gib(need['4bit'])} 显存，只剩 {gib(free)}；"
                                      "请停止训练或卸载另一个对话模型，或换个更小的模型")


def words(precision: str, info: dict) -> str:
    """What was chosen and why, for a log or the command line ("8-bit: 16-bit needs 26.6 GiB, 23.5 GiB free")."""
    need, free = info["need"], info["free"]
    if info["asked"] != "auto":
        return f"{precision} as chosen ({gib(need[precision])} needed, {gib(free)} free)"  # int4 only when chosen
    if precision == "16bit":
        return f"16-bit: it needs {gib(need['16bit'])} and {gib(free)} are free"
    return f"{precision[:-3]}-bit: 16-bit needs {gib(need['16bit'])} and this GPU has {gib(free)} free"


# ---- the fit check before a job: from config.json alone --------------------------------------
# Calibrated on the peaks `bench/speed.py` measured (torch's max_memory_allocated, docs/BENCHMARKS.md,
# "Training speed and memory"): 13B shape default 9.44 / tutorial 11.23 GiB, 7B 5.62 / 6.86, 135M
# 0.49 / 0.57, all with a 49152-word vocabulary, 512 tokens, r64 on q_proj and v_proj. With these
# constants the estimates are 9.36 / 11.25, 5.62 / 6.91 and 0.42 / 0.70 GiB: within 1% for 7B
# and 13B; the 135M shape is off by up to 23% (its few MiB of weights leave workspaces and the
# attention's own buffers, not modelled, as a large share). tests/test_gpu.py checks them on a GPU.
LAYER_HIDDEN = 3  # bytes-of-compute-dtype per token per hidden unit of the one layer recomputed at a time
LAYER_MLP = 5  # the same per MLP unit (gate, up, their product and gradients)
LOGIT_BYTES = 2  # per token per vocabulary word, without Liger's fused loss (which never holds all the logits)
WORKSPACE = 0.1 * 2**30  # cuBLAS workspaces and small buffers, seen as the floor on the 135M shape
NF4_DQ_BYTES = 0.5 + 0.0161  # NF4 with double quantization: 4.127 bits a weight (the QLoRA paper)
ADAM_BYTES = 16  # a float32 LoRA weight, its gradient and Adam's two moments
CUDA_CONTEXT = 0.6 * 2**30  # what a CUDA process holds outside torch's allocator (not in the peaks above)
RESERVE = 1.05  # the allocator reserves a little more than it hands out (expandable segments on)
# Host memory of a process with torch, transformers and the data loaded: round numbers, not yet
# measured job by job (the merge's is: docs/BENCHMARKS.md, 1.21 GiB anonymous RSS for the 13B shape).
PROCESS_GPU_JOB = 3 * 2**30  # torch with CUDA, transformers, trl and the tokenized rows
PROCESS_CPU_JOB = 1.5 * 2**30
PROCESS_MERGE = 0.12 * 2**30  # torch and safetensors only (7B in its own dtype: 0.43 GiB = this + the adapter)
# Verdicts: an estimate within 10% of what is free is "tight"; past the machine's whole memory by
# a quarter (beyond the 15% the estimates aim at) it certainly will not fit, and the job is refused.
TIGHT = 0.9
SURE = 1.25
TARGETS = {"default": ("q_proj", "v_proj"),
           "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


def read_config(folder: str | Path) -> dict:
    """The model's config.json (its text part for multimodal models); {} when it cannot be read (a hub id
    not downloaded yet). `folder` may be "default", as a check before a job names the embedded model."""
    try:
        folder = local(folder)
    except UserError:
        return {}
    try:
        c = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return c.get("text_config", c) if isinstance(c, dict) else {}


def local(folder: str | Path) -> Path:
    """The folder of a model as a check before a job names it ("default" is the embedded model)."""
    from core import models

    return models.embedded() if models.is_default(str(folder)) else Path(folder)


def shape(config: dict) -> dict:
    """Layers, widths and parameter counts of a decoder (Llama, Qwen, Mistral style), from its config."""
    hidden = int(config.get("hidden_size") or 0)
    heads = int(config.get("num_attention_heads") or 1)
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config.get("intermediate_size") or 4 * hidden)
    layers = int(config.get("num_hidden_layers") or 0)
    vocab = int(config.get("vocab_size") or 0)
    dims = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}
    body = layers * (sum(i * o for i, o in dims.values()) + 2 * hidden)
    edges = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return {"hidden": hidden, "layers": layers, "vocab": vocab, "inter": inter, "dims": dims, "body": body,
            "edges": edges, "total": body + edges + hidden, "kv_bytes_per_token": 2 * layers * kv * head_dim * 2,
            "largest": max([vocab * hidden, *(i * o for i, o in dims.values())])}


def lora_parameters(s: dict, targets: str, r: int) -> int:
    """Trainable LoRA weights: r x (in + out) for each targeted layer of each block."""
    names = TARGETS.get(targets) or tuple(t.strip() for t in targets.split(",") if t.strip())
    return s["layers"] * sum(r * (i + o) for n, (i, o) in s["dims"].items() if n in names)


def train_needs(config: dict, cfg, cuda: bool, liger: bool = True) -> dict:
    """Bytes a training run needs: {"gpu": peak + context (0 without a GPU), "host": RAM, "parts": {...}}.

    `cfg` is a TrainConfig; `liger` whether Liger's kernels are installed where it runs.
    """
    s = shape(config)
    tokens = cfg.batch_size * cfg.max_seq_length  # packed rows are full; unpacked ones at most this long
    lora = lora_parameters(s, cfg.target_modules, cfg.lora_r) * ADAM_BYTES
    if not cuda:  # plain LoRA in float32 on the CPU: everything in RAM, four bytes a number
        layer = tokens * (LAYER_HIDDEN * s["hidden"] + LAYER_MLP * s["inter"]) * 4
        saved = s["layers"] * tokens * s["hidden"] * 4 if cfg.gradient_checkpointing else s["layers"] * layer
        parts = {"weights": s["total"] * 4, "lora": lora, "activations": saved + layer,
                 "logits": tokens * s["vocab"] * 4 * 3, "process": PROCESS_CPU_JOB}
        return {"gpu": 0, "host": int(sum(parts.values())), "parts": parts}
    fp16 = cfg.compute_dtype == "float16"
    width = 4 if cfg.compute_dtype == "float32" or fp16 else 2  # fp16 runs the residual stream in float32
    nf4 = NF4_DQ_BYTES if cfg.double_quant else 0.5 + 0.0625
    # bitsandbytes keeps the embeddings and the head unquantized; fp16 runs upcast them to float32.
    body = s["body"] * (nf4 if cfg.quantization == "4bit" else 4 if cfg.compute_dtype == "float32" else 2)
    weights = body + s["edges"] * (4 if fp16 or cfg.compute_dtype == "float32" else 2)
    layer = tokens * (LAYER_HIDDEN * s["hidden"] + LAYER_MLP * s["inter"]) * width
    if not cfg.gradient_checkpointing:
        saved = s["layers"] * layer
    else:  # each layer's input; offloaded, only the two nearest layers' stay on the GPU
        saved = (2 if cfg.offload_activations else s["layers"]) * tokens * s["hidden"] * 2 * (width // 2)
    logits = 0 if (cfg.liger_kernels and liger) else tokens * s["vocab"] * LOGIT_BYTES
    parts = {"weights": weights, "lora": lora, "activations": saved + layer, "logits": logits, "workspace": WORKSPACE}
    peak = sum(parts.values())
    arena = arena_bytes(_Dims(s), cfg.batch_size, cfg.max_seq_length) if cfg.offload_activations else 0
    return {"gpu": int(peak * RESERVE + CUDA_CONTEXT), "peak": int(peak), "host": int(PROCESS_GPU_JOB + arena),
            "parts": parts}


def arena_bytes(config, batch_size: int, max_seq_length: int) -> int:
    """Pinned CPU memory for the offloaded activations (core/offload.py): one micro-batch's decoder-layer inputs, with slack."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", 0)
    layers = getattr(text, "num_hidden_layers", 0)
    if not hidden or not layers:
        return 0
    return (layers + 4) * batch_size * max_seq_length * hidden * 2


class _Dims:
    """The two numbers arena_bytes reads from a model config."""

    def __init__(self, s: dict):
        self.hidden_size, self.num_hidden_layers = s["hidden"], s["layers"]


def merge_needs(config: dict, adapter_params: int, dtype: str, exact: bool, cuda: bool) -> dict:
    """Bytes a merge needs: tensor by tensor (`exact`: host memory for a few tensors and the adapter only, no
    GPU), else peft's merge with the whole model in memory (on the GPU where there is one)."""
    s = shape(config)
    out = 4 if dtype == "float32" else 2
    if exact:  # docs/BENCHMARKS.md: merged from bf16 to float16 with no GPU at 0.90 GiB (7B), 1.21 GiB (13B)
        # The base is read memory-mapped and each tensor written straight to its file (core.fold): what stays in
        # memory is the converted tensors in flight (two of the largest, the embeddings and the LM head), one
        # weight with its delta in float32, and the adapter in float32.
        linear = max(i * o for i, o in s["dims"].values())
        parts = {"tensors": 2 * s["largest"] * out, "delta": linear * 4, "adapter": adapter_params * 4}
        return {"gpu": 0, "host": int(PROCESS_MERGE + sum(parts.values())), "parts": parts}
    whole = s["total"] * out
    if cuda:
        return {"gpu": int(whole * 1.1 + CUDA_CONTEXT), "host": int(PROCESS_GPU_JOB), "parts": {"model": whole}}
    return {"gpu": 0, "host": int(whole * 1.2 + PROCESS_CPU_JOB), "parts": {"model": whole}}


def chat_needs(config: dict, cuda: bool) -> dict:
    """Bytes chat needs in each precision on a GPU (weights, the context's cache, a margin), or in RAM on the CPU."""
    s = shape(config)
    tokens = min(CONTEXT, int(config.get("max_position_embeddings") or CONTEXT))
    cache = s["kv_bytes_per_token"] * tokens
    if not cuda:  # float32 on the CPU
        return {"cpu": int(s["total"] * 4 + cache * 2 + PROCESS_CPU_JOB)}
    extra = cache + MARGIN
    return {"16bit": int(s["total"] * 2 + extra), "8bit": int(s["body"] + s["edges"] * 2 + extra),
            "4bit": int(s["body"] * NF4_BYTES + s["edges"] * 2 + extra)}


def machine(on: list[int] | None = None) -> dict:
    """What is free now: {"gpu": bytes on the jobs' GPU or None without one, "gpu_total", "ram", "ram_total"}.

    `on`: the GPUs to ask about instead (their numbers on the page), their memory summed (a model spread over
    them). NVML, not torch: the panel must not start a CUDA context of its own to ask.
    """
    import psutil

    from core import gpus, monitor

    vm = psutil.virtual_memory()
    have = {"gpu": None, "gpu_total": None, "ram": vm.available, "ram_total": vm.total}
    try:
        cards = monitor.snapshot().get("gpus") or []
    except Exception:  # a broken driver: judged as a machine without a GPU
        cards = []
    if on:
        chosen = [c for c in cards if c["index"] in set(on)]
    else:
        seen = gpus.visible()
        index = int(seen[0]) if seen and seen[0].isdigit() else 0
        card = next((c for c in cards if c["index"] == index), cards[0] if cards else None)
        chosen = [card] if card else []
    if chosen:
        have["gpu_total"] = int(sum(c["memory_total_gb"] for c in chosen) * 2**30)
        have["gpu"] = room([int((c["memory_total_gb"] - c["memory_used_gb"]) * 2**30) for c in chosen])
    return have


def room(free: list[int]) -> int:
    """Bytes a model spread over GPUs with these bytes free can use: each GPU after the first keeps a margin of its
    own (its CUDA context, its part of a step), as the loader leaves it (core.models.load_for_inference)."""
    return int(sum(free) - MARGIN * (len(free) - 1)) if free else 0


def judge(need: int, free: int, total: int) -> str:
    """"fits", "tight" (within 10% of what is free: it may), "no" (more than is free) or "never" (the whole
    machine is too small even with nothing else running, beyond the estimate's error)."""
    if need > total * SURE:
        return "never"
    if need <= free * TIGHT:
        return "fits"
    return "tight" if need <= free / TIGHT else "no"


def liger_installed() -> bool:
    """Whether Liger's kernels are there for a run (its fused loss never holds all the logits)."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def check_train(cfg, folder: str | Path, have: dict | None = None, liger: bool | None = None) -> dict:
    """The training run's fit, in numbers: {"verdict", "where" ("gpu"/"ram"), "need", "free", "total"}."""
    have = have or machine()
    cuda = have["gpu"] is not None
    if liger is None:
        liger = liger_installed()
    config = read_config(folder)
    if not config.get("hidden_size"):  # not downloaded yet, or a layout we cannot read: no verdict
        return {"verdict": "unknown", "where": "gpu" if cuda else "ram", "need": 0, "free": 0, "total": 0}
    need = train_needs(config, cfg, cuda, liger)
    where = "gpu" if cuda else "ram"
    n = need["gpu"] if cuda else need["host"]
    free, total = (have["gpu"], have["gpu_total"]) if cuda else (have["ram"], have["ram_total"])
    verdict = judge(n, free, total)
    # Host memory counts too on a GPU machine (the offloaded activations' pinned buffer).
    if cuda and verdict in ("fits", "tight") and judge(need["host"], have["ram"], have["ram_total"]) in ("no", "never"):
        where, n, free, total = "ram", need["host"], have["ram"], have["ram_total"]
        verdict = judge(n, free, total)
    return {"verdict": verdict, "where": where, "need": n, "free": free, "total": total}


# The changes tried, in order, when a run does not fit: each keeps what came before it. Halving the
# batch doubles the accumulation, so an update still sees as many rows.
def remedies(cfg, folder: str | Path, have: dict | None = None, liger: bool | None = None) -> dict:
    """The fewest setting changes (from a fixed order) with which the run fits, {} when none does."""
    have = have or machine()
    steps = []
    if have["gpu"] is not None:
        steps += [{"quantization": "4bit"}, {"offload_activations": True}]
    steps.append({"gradient_checkpointing": True})
    changes: dict = {}
    current = cfg
    for step in steps + [None] * 12:
        if check_train(current, folder, have, liger)["verdict"] in ("fits", "unknown"):
            return changes
        if step is None:  # then the batch, the length and the rank, in that order, halved
            if current.batch_size > 1:
                step = {"batch_size": current.batch_size // 2, "grad_accum": current.grad_accum * 2}
            elif current.max_seq_length > 256:
                step = {"max_seq_length": current.max_seq_length // 2}
            elif current.lora_r > 8:
                step = {"lora_r": current.lora_r // 2}
            else:
                return {}
        step = {k: v for k, v in step.items() if getattr(current, k) != v}
        changes.update(step)
        current = current.replace(**step)
    return {}


def retry_changes(cfg, folder: str | Path, have: dict | None = None) -> dict:
    """Settings for a run that ran out of memory: those the estimate says fit, else the batch (or length) halved.

    The estimate said the run fitted when it did not, so at least one real step down is taken.
    """
    changes = remedies(cfg, folder, have)
    if changes:
        return changes
    if cfg.batch_size > 1:
        return {"batch_size": cfg.batch_size // 2, "grad_accum": cfg.grad_accum * 2}
    if cfg.max_seq_length > 128:
        return {"max_seq_length": cfg.max_seq_length // 2}
    return {}


def describe(changes: dict) -> str:
    """Setting changes in words for the command line ("batch 2 (accumulation 2), max length 1024")."""
    words = {"quantization": lambda v: "turn on 4-bit" if v == "4bit" else "4-bit off",
             "offload_activations": lambda v: "offload activations" if v else "no offloading",
             "gradient_checkpointing": lambda v: "turn on gradient checkpointing" if v else "no checkpointing",
             "batch_size": lambda v: f"batch {v}", "grad_accum": lambda v: f"accumulation {v}",
             "max_seq_length": lambda v: f"max length {v}", "lora_r": lambda v: f"LoRA rank {v}"}
    return ", ".join(words[k](v) for k, v in changes.items() if k in words)


def refuse_train(cfg, folder: str | Path) -> None:
    """Refuse, in one line, a run that certainly will not fit this machine (the estimate past its whole memory)."""
    from core import gpus

    have = machine()
    found = check_train(cfg, folder, have)
    if found["verdict"] != "never":
        return
    what = "GPU memory" if found["where"] == "gpu" else "RAM"
    changes = remedies(cfg, folder, have)
    fix = f"try: {describe(changes)}" if changes else "choose a smaller model"
    what_zh = "显存" if found["where"] == "gpu" else "内存"
    fix_zh = f"可以试试：{describe(changes)}" if changes else "请换个更小的模型"
    if found["where"] == "gpu" and gpus.count() > 1:  # more GPUs do not add up for one model: say so
        fix += ("; with several GPUs each one trains a whole copy of the model, so more GPUs do not make room "
                "(one model split across GPUs, FSDP, is not supported yet)")
        fix_zh += "；多块 GPU 训练时每块都要放下整个模型，GPU 再多也腾不出空间（暂不支持把一个模型拆到多块 GPU 上训练，即 FSDP）"
    raise UserError(f"memory: this run needs about {gib(found['need'])} of {what} and this machine has "
                    f"{gib(found['total'])} in all, so it will not fit; {fix}", field="batch_size",
                    zh=f"memory：这次运行约需 {gib(found['need'])} {what_zh}，本机总共只有 {gib(found['total'])}，放不下；{fix_zh}")


def _found(need: int, where: str, have: dict) -> dict:
    free, total = (have["gpu"], have["gpu_total"]) if where == "gpu" else (have["ram"], have["ram_total"])
    return {"verdict": judge(need, free, total), "where": where, "need": need, "free": free, "total": total}


def check_merge(adapter: str | Path, base: str | Path, dtype: str, have: dict | None = None) -> dict:
    """A merge's fit: tensor by tensor in RAM, or peft's whole-model merge (then "why" says why)."""
    from core.fold import unsupported

    have = have or machine()
    adapter, base = Path(adapter), local(base)
    why = unsupported(adapter, base)
    weights = adapter / "adapter_model.safetensors"
    adapter_params = weights.stat().st_size // 4 if weights.is_file() else 0
    need = merge_needs(read_config(base), adapter_params, dtype, exact=why is None, cuda=have["gpu"] is not None)
    where = "gpu" if need["gpu"] else "ram"
    return {**_found(need[where if where == "gpu" else "host"], where, have), "why": why}


def check_chat(folder: str | Path, have: dict | None = None, asked: str = "auto") -> dict:
    """Chat's fit: on a GPU the precision it would load in ("precision", "need" per precision), else RAM."""
    have = have or machine()
    config = read_config(folder)
    if not config.get("hidden_size"):
        return {"verdict": "unknown", "where": "ram" if have["gpu"] is None else "gpu", "need": 0, "free": 0, "total": 0}
    if have["gpu"] is None:
        return _found(chat_needs(config, cuda=False)["cpu"], "ram", have)
    need = needs(local(folder))
    fitting = [p for p in PRECISIONS if need[p] <= have["gpu"]] if asked == "auto" else \
        [asked] if need[asked] <= have["gpu"] else []
    precision = fitting[0] if fitting else (asked if asked != "auto" else "4bit")
    found = _found(need[precision], "gpu", have)
    return {**found, "verdict": found["verdict"] if fitting else "no", "precision": precision, "needs": need}
