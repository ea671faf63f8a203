"""Folding a LoRA adapter into its base model's weights, one tensor at a time.

A merge that loads the whole model needs the whole model in memory (26 GB of GPU or RAM for a
13B in 16 bits). Here the base's weights are read tensor by tensor from its files (safetensors
reads one tensor without the rest; old pickle `.bin` files are read with torch's weights_only
loader, memory-mapped), each LoRA delta (scale · B·A) is added in float32 and rounded once to the
output dtype, and the result is written in shards of at most SHARD bytes with an index, as
`save_pretrained` does. Memory: the largest tensor, one output shard and the adapter.

"As trained" (`rounding`): QLoRA trained the adapter against the base rounded to 4-bit NF4, not
against its 16-bit weights. With rounding, each weight bitsandbytes would store in 4 bits is
quantized and dequantized with bitsandbytes' own functions (they run on the CPU) before the
delta is added, so the merged model is the model of training.

Adapters this cannot merge exactly (DoRA, LoRA on embeddings, modules_to_save, per-layer rank
or alpha patterns, another peft type) are named by `unsupported()`: core/merge.py then uses
peft's own merge.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

SHARD = 2 * 2**30
ADAPTER_PREFIX = "base_model.model."
SMALL_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def unsupported(adapter: Path, base: Path) -> str | None:
    """Why this adapter needs peft's merge (in words), or None when folding it here is exact."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        return f"a {config.get('peft_type')} adapter"
    for key, what in (("use_dora", "DoRA"), ("modules_to_save", "modules_to_save"), ("rank_pattern", "a rank pattern"),
                      ("alpha_pattern", "an alpha pattern"), ("lora_bias", "LoRA biases"),
                      ("fan_in_fan_out", "fan-in/fan-out weights"), ("layers_pattern", "a layers pattern")):
        if config.get(key):
            return what
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    odd = [k for k in keys if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if odd:
        return f"weights other than LoRA pairs ({odd[0]})"
    changed = {k[: -len(".lora_A.weight")].removeprefix(ADAPTER_PREFIX) + ".weight"
               for k in keys if k.endswith(".lora_A.weight")}
    stored = {name for name, _, _ in shapes(weight_files(base))}
    if stored and not changed <= stored:  # a tied lm_head, say: it is stored as the embeddings
        return f"LoRA on {sorted(changed - stored)[0]}, which the base stores under another name"
    return None


def weight_files(base: Path) -> list[Path]:
    """The base's weight files: safetensors if it has them, else pickle .bin files (read safely)."""
    found = sorted(base.glob("*.safetensors"))
    return found or sorted(base.glob("pytorch_model*.bin"))


def _tensors(file: Path) -> Iterator[tuple[str, object]]:
    """(name, tensor) of one weight file, one at a time."""
    import torch

    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    else:  # weights_only never runs code from the file; mmap keeps it on disk until read
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        for name in list(state):
            yield name, state.pop(name)


def shapes(files: list[Path]) -> list[tuple[str, list[int], bool]]:
    """(name, shape, floating) of every tensor, read from the files' headers where possible."""
    out = []
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="numpy") as f:  # headers only: no torch import for a listing
                for name in f.keys():
                    part = f.get_slice(name)
                    out.append((name, list(part.get_shape()), part.get_dtype().startswith(("F", "BF"))))
        else:
            out += [(name, list(t.shape), t.is_floating_point()) for name, t in _tensors(file)]
    return out


def _lora(adapter: Path) -> tuple[dict[str, tuple], float]:
    """{base weight name: (A, B)} in float32, and the scale of B·A (alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    raw = load_file(str(adapter / "adapter_model.safetensors"))
    pairs: dict[str, tuple] = {}
    for key in raw:
        if key.endswith(".lora_A.weight"):
            stem = key[: -len(".lora_A.weight")]
            name = stem.removeprefix(ADAPTER_PREFIX) + ".weight"
            pairs[name] = (raw[key].float(), raw[stem + ".lora_B.weight"].float())
    return pairs, scale


def quantized(name: str, tensor) -> bool:
    """Whether a 4-bit load stores this weight in NF4: the decoder's linear layers (2-D weights), not the
    embeddings or the head, which transformers keeps in 16 bits."""
    return tensor.ndim == 2 and name.endswith(".weight") and not any(k in name for k in ("embed", "lm_head", "wte", "wpe"))


def nf4_round(tensor, double_quant: bool = True, dtype: str = "bfloat16", device: str | None = None):
    """The weight as a 4-bit QLoRA run saw it, in float32 on the CPU: cast to the run's compute dtype, quantized
    to NF4 in blocks of 64 (scales quantized again with double quantization) and dequantized, by bitsandbytes.

    On a GPU where there is one (bitsandbytes' CPU path manages about 5 M weights a second: 40 minutes
    for a 13B), one tensor at a time."""
    import logging

    import torch

    # On import, bitsandbytes announces an optional CPU matmul kernel it lacks (not used here): not for the log.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    packed, state = quantize_4bit(tensor.to(device=device, dtype=getattr(torch, dtype)).contiguous(), blocksize=64,
                                  compress_statistics=double_quant, quant_type="nf4")
    return dequantize_4bit(packed, state).float().cpu()


def fold(base: Path, adapter: Path, out: Path, dtype: str, progress: Callable[[float, str], None],
         rounding: dict | None = None) -> dict:
    """Write base + adapter as a standalone model into `out` (an empty folder); returns what was done.

    `rounding` ({"double_quant", "dtype"} of the run): add the adapter to the NF4-rounded weights.
    """
    import torch
    from safetensors.torch import save_file

    files = weight_files(base)
    if not files:
        from core.errors import UserError

        raise UserError(f"base: {base} has no weight files (*.safetensors or pytorch_model*.bin)", field="base",
                        zh=f"base：{base} 中没有权重文件（*.safetensors 或 pytorch_model*.bin）")
    target = getattr(torch, dtype)
    size = torch.empty((), dtype=target).element_size()
    plan = shapes(files)
    pairs, scale = _lora(adapter)
    names = {name for name, _, _ in plan}
    missing = sorted(set(pairs) - names)
    if missing:
        from core.errors import UserError

        raise UserError(f"adapter: {adapter} changes {missing[0]}, which the base model {base} does not have; "
                        "merge it into the model it was trained on", field="adapter",
                        zh=f"adapter：{adapter} 修改了 {missing[0]}，但基础模型 {base} 没有它；请合并到训练时用的那个模型")

    # Shards first (from the headers), so each file knows its name "model-00001-of-00003".
    shards: list[list[str]] = [[]]
    filled = 0
    for name, shape, floating in plan:
        nbytes = math.prod(shape) * (size if floating else 8)
        if shards[-1] and filled + nbytes > SHARD:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += nbytes
    shard_of = {name: i for i, group in enumerate(shards) for name in group}
    file_name = ("model.safetensors" if len(shards) == 1 else
                 "model-{:05d}-of-" + f"{len(shards):05d}.safetensors")

    pending: dict[str, object] = {}
    written, total, merged, largest_delta, rounded = 0, 0, 0, 0.0, 0
    weight_map = {}

    def flush(index: int) -> None:
        name = file_name.format(index + 1)
        save_file(pending, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in pending})
        pending.clear()

    current = 0
    for file in files:
        for name, tensor in _tensors(file):
            if rounding and tensor.is_floating_point() and quantized(name, tensor):
                tensor = nf4_round(tensor, **rounding)
                rounded += 1
            if name in pairs:
                a, b = pairs[name]
                delta = (b @ a) * scale
                new = tensor.float() + delta
                merged += 1
                largest_delta = max(largest_delta, delta.abs().max().item())
            else:
                new = tensor
            new = new.to(target) if new.is_floating_point() else new
            if new.is_floating_point() and not torch.isfinite(new).all():
                from core.errors import UserError

                raise UserError(f"merge: {name} holds NaN/inf values in {dtype}; merge in bfloat16 or float32",
                                field="dtype", zh=f"merge：{name} 在 {dtype} 下出现 NaN/inf 值；请用 bfloat16 或 float32 合并")
            index = shard_of[name]
            if index != current:  # tensors arrive in file order, which the plan follows
                flush(current)
                current = index
            pending[name] = new.contiguous()
            total += new.numel() * new.element_size()
            written += 1
            if written % max(1, len(plan) // 50) == 0 or written == len(plan):  # about fifty reports
                progress(0.1 + 0.7 * written / len(plan), f"folding the adapter into the weights ({written}/{len(plan)})")
    flush(current)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    _copy_files(base, adapter, out, dtype)
    return {"tensors": written, "merged_tensors": merged, "shards": len(shards), "largest_delta": largest_delta,
            "rounded_tensors": rounded}


def _copy_files(base: Path, adapter: Path, out: Path, dtype: str) -> None:
    """config.json (with the new dtype), generation config, and the tokenizer the run trained with."""
    for name in SMALL_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
