"""`python -m core merge`: fold a trained LoRA adapter into its base model, giving a standalone model.

The base's 16 (or 32) bit weights get the adapter, never 4-bit ones, which would round the
update away. core/fold.py does it tensor by tensor, so neither the GPU nor the whole model in
memory is needed; adapters it cannot merge exactly go through peft's merge. Where both fit in
memory, the merged model is checked against base + adapter on a probe prompt; it appears under
its final name only once it is complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from core import fit, fold, logs, models, paths, status
from core.config import MergeConfig, from_argv
from core.errors import Text, UserError

log = logging.getLogger("qlora_studio.merge")
PROBE = ("### Human: Who are you, and what can you do for me today? ### Assistant: I am an assistant. "
         "### Human: 请用一句话介绍你自己。 ### Assistant:")
BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
# In float32 the merged model must give the logits of base + adapter to 1e-3 of their largest
# magnitude (x·W + x·A·B and x·(W + A·B) round differently, and more so as the thread count
# changes the order of the sums: 5e-3 on logits near 20 was seen on two cores). In 16 bits merging
# rounds every weight once more (bf16 keeps 8 bits of mantissa: logits near 30 move by up to ~2),
# so there the check is that the next-token choice agrees at most probe positions (a broken
# merge agrees almost nowhere).
TOLERANCE = 1e-3
AGREEMENT = 0.8



def cli(argv: list[str]) -> int:
    """`python -m core merge --adapter RUN/adapter --out DIR [--base M] [--dtype D]`."""
    cfg = from_argv(MergeConfig, argv, "python -m core merge", "Merge a trained adapter into its base model.")
    logs.quiet()
    # Started by the panel, the merge reports in the job folder the panel made; by hand, it only prints.
    job, report = status.reporting(job_folder(cfg.out), lambda progress: merge(cfg, progress, own_process=True), log,
                                   "merge", "merge.log")
    failed = None if report["ok"] else Text("the merged model does not answer like base + adapter",
                                            "合并后的模型回答与“基础模型 + 适配器”不一致")
    job.update(state="failed" if failed else "finished", error=failed, progress=1.0, report=report, ended=time.time(),
               hint=None if report["ok"] else Text("merge again in bfloat16 or float32", "请用 bfloat16 或 float32 重新合并"))
    print(json.dumps(report, ensure_ascii=False))
    return 0 if report["ok"] else 1


def job_folder(out: str | Path) -> Path:
    """Where a merge into `out` started by the panel keeps its status.json and log: a hidden folder beside it."""
    out = Path(out).expanduser().resolve()
    return out.with_name(f".{out.name}.job")


def merge(cfg: MergeConfig, progress=None, own_process: bool = False) -> dict:
    """Merge cfg.adapter into its base and write cfg.out; returns the report (path, size, the check's numbers).
    `own_process` (the command line's): bitsandbytes may be left out of the process where nothing needs it."""
    say = progress or (lambda fraction, text: None)
    cfg.check()
    adapter, out = Path(cfg.adapter).expanduser(), Path(cfg.out).expanduser().resolve()
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"adapter: {cfg.adapter} has no adapter_config.json; pick a finished run's adapter folder",
                        field="adapter", zh=f"adapter：{cfg.adapter} 没有 adapter_config.json；请选择已完成运行的适配器文件夹")
    if out.exists():
        raise UserError(f"out: {cfg.out} already exists; choose a new folder for the merged model", field="out",
                        zh=f"out：{cfg.out} 已存在，请为合并后的模型选择新文件夹")
    # peft's reading of the config (seconds of import) only where peft merges: folding reads r and alpha itself.
    record, trained_on = models.check_adapter(adapter, with_peft=False)
    base_spec = cfg.base or trained_on
    if not base_spec:
        raise UserError(f"base: {adapter} does not say which model it was trained on; choose the base model",
                        field="base", zh=f"base：{adapter} 没有记录它是在哪个模型上训练的；请选择基础模型")
    base = Path(models.resolve(base_spec))
    models.check_own_code(str(base), base_spec, cfg.trust_remote_code)
    why_not = fold.unsupported(adapter, base)
    if why_not is not None:  # peft merges: its own reading of the config (the weights were checked above)
        models.check_peft_config(adapter, json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")))
    rounding, weights = as_trained(adapter, record) if cfg.base_weights == "as-trained" else (None, "original")
    if own_process and rounding is None:  # only rounding as trained, and a base stored in 4 or 8 bits, need it
        models.leave_out_bitsandbytes(str(base))
    if rounding and why_not is not None:
        raise UserError(f"base_weights: as-trained merges tensor by tensor, and this adapter needs peft's merge "
                        f"({why_not}); merge it into the original weights", field="base_weights",
                        zh=f"base_weights：“按训练时”合并是逐个张量进行的，而这个适配器需要 peft 的合并"
                           f"（{why_not}）；请合并到原始权重")
    _check_room(str(base), out, cfg.dtype, in_memory=why_not is not None)

    started = time.time()
    try:
        with paths.whole(out) as tmp:
            if why_not is None:  # tensor by tensor: neither the GPU nor the whole model in memory
                say(0.05, Text(f"reading {base_spec} tensor by tensor", f"正在逐个张量读取 {base_spec}"))
                folded = fold.fold(base, adapter, tmp, cfg.dtype, say, rounding)
                method = "tensor by tensor"
            else:
                say(0.05, Text(f"loading {base_spec} with the adapter (peft's merge: the adapter has {why_not})",
                               f"正在加载 {base_spec} 和适配器（用 peft 合并：适配器含有 {why_not}）"))
                folded = _with_peft(base_spec, adapter, tmp, cfg)
                method = f"peft ({why_not})"
            say(0.85, Text("checking the merged model against base + adapter", "正在核对合并后的模型与基础模型 + 适配器的输出"))
            check = _compare(base_spec, adapter, tmp, cfg, rounding)
            size = models.size_bytes(tmp)
            ok = check["finite"] and (not check["compared"] or (check["top1_agreement"] >= AGREEMENT and (
                cfg.dtype != "float32" or check["max_abs_diff"] <= TOLERANCE * max(1.0, check["logit_scale"]))))
            report = {"ok": ok, "path": str(out), "size_bytes": size, "size_gb": round(size / 2**30, 3), **check,
                      "dtype": cfg.dtype, "method": method, **folded, "base_model": base_spec, "base_weights": weights,
                      "adapter": str(adapter.resolve()), "seconds": round(time.time() - started, 1)}
            # The record travels on: chat reads the template from here, like it would from the adapter.
            models.write_record(tmp, {**record, "base_model": record.get("base_model", base_spec), "merge": report})
    except paths.Exists:  # made by someone else while we worked: still never overwrite
        raise UserError(f"out: {cfg.out} already exists; choose a new folder for the merged model", field="out",
                        zh=f"out：{cfg.out} 已存在，请为合并后的模型选择新文件夹") from None
    diff = f", max logit difference {check['max_abs_diff']:.2e}" if check["compared"] else ""
    zh_diff = f"，最大 logit 差 {check['max_abs_diff']:.2e}" if check["compared"] else ""
    say(1.0, Text(f"merged model written to {out} ({report['size_gb']} GiB{diff})",
                  f"合并后的模型已写入 {out}（{report['size_gb']} GiB{zh_diff}）"))
    if not check["finite"]:
        say(1.0, Text(f"the merged model gives NaN/inf values in {cfg.dtype}: do not use it; merge in bfloat16 or float32",
                      f"合并后的模型在 {cfg.dtype} 下输出 NaN/inf：请勿使用；请用 bfloat16 或 float32 重新合并"))
    return report


def _with_peft(base_spec: str, adapter: Path, out: Path, cfg: MergeConfig) -> dict:
    """peft's merge_and_unload on the whole model in memory, for adapters folding cannot merge exactly."""
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model, tokenizer, _, _ = models.load_for_inference(base_spec, adapter, dtype=cfg.dtype, device=device,
                                                       trust_remote_code=cfg.trust_remote_code)
    try:
        model = model.merge_and_unload()
        model.save_pretrained(out, safe_serialization=True, max_shard_size="2GB")
        tokenizer.save_pretrained(out)
    finally:
        del model
        if device != "cpu":
            torch.cuda.empty_cache()
    return {}


def as_trained(adapter: Path, record: dict) -> tuple[dict | None, str]:
    """How the run's QLoRA rounded its base ({"double_quant", "dtype"}), and the words for the report.

    None where the run trained on the original weights (without a GPU, or with quantization off):
    there, "as trained" is the original.
    """
    config = record.get("config") or {}
    mode = status.read_json(adapter.parent / status.FILE).get("mode") or ""
    if config.get("quantization", "4bit") != "4bit" or (mode and not mode.startswith("4-bit")):
        return None, f"as trained = original (the run trained on the original weights: {mode or 'no 4-bit'})"
    # "auto" is bf16 on the cards QLoRA runs on today; fp16 cards (before Ampere) say so in the mode.
    dtype = {"float16": "float16", "float32": "float32"}.get(config.get("compute_dtype"), "bfloat16")
    if "fp16" in mode:
        dtype = "float16"
    return {"double_quant": bool(config.get("double_quant", True)), "dtype": dtype}, "as trained (NF4-rounded)"


def round_like_training(model, rounding: dict) -> None:
    """Round a loaded base's 4-bit-stored weights to NF4 in place, as the run saw them (the LoRA layers stay)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" not in name and fold.quantized(name, param):
                param.copy_(fold.nf4_round(param.detach().cpu(), **rounding).to(param.dtype))


def _compare(base_spec: str, adapter: Path, merged: Path, cfg: MergeConfig, rounding: dict | None = None) -> dict:
    """The merged model's logits on a probe against base + adapter, where both fit in memory at once.

    With `rounding`, base + adapter is the run's own: its base rounded to NF4 as training saw it.
    """
    import psutil
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    need = 2 * models.size_bytes(merged) * 1.3  # the merged model and base + adapter, at once
    free = fit.gpu_free() if device != "cpu" else psutil.virtual_memory().available
    if need > free or not cfg.compare:  # folding checked every tensor for NaN/inf as it wrote it
        return {"compared": False, "finite": True, "device": device, "max_abs_diff": None, "mean_abs_diff": None,
                "top1_agreement": None, "logit_scale": None}
    from transformers import AutoModelForCausalLM

    model, tokenizer, _, _ = models.load_for_inference(base_spec, adapter, dtype=cfg.dtype, device=device,
                                                       trust_remote_code=cfg.trust_remote_code)
    if rounding:
        round_like_training(model, rounding)
    probe = tokenizer(PROBE, return_tensors="pt").to(device)
    with torch.no_grad():
        before = model(**probe).logits.float()
        del model
        model = AutoModelForCausalLM.from_pretrained(merged, dtype=getattr(torch, cfg.dtype),
                                                     trust_remote_code=cfg.trust_remote_code).to(device).eval()
        after = model(**probe).logits.float()
        # NaN passes every comparison and agrees with itself: a merge that overflowed (or a NaN base) fails here.
        finite = bool(torch.isfinite(before).all() and torch.isfinite(after).all()
                      and all(torch.isfinite(p).all() for p in model.parameters()))
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    return {"compared": True, "finite": finite, "device": device, "max_abs_diff": (before - after).abs().max().item(),
            "logit_scale": before.abs().max().item(),
            "mean_abs_diff": (before - after).abs().mean().item(),
            "top1_agreement": (before.argmax(-1) == after.argmax(-1)).float().mean().item()}


def _check_room(base: str, out: Path, dtype: str, in_memory: bool) -> None:
    """Refuse early, in words, when the disk (or, for peft's merge, the memory) is too small."""
    import psutil

    stored = _stored_bytes_per_weight(base)
    need = int(models.size_bytes(base) / stored * BYTES[dtype])
    root = out.parent
    while not root.exists():
        root = root.parent
    free = shutil.disk_usage(root).free
    if free < need * 1.1:
        raise UserError(f"out: not enough disk space in {root}: the merged model needs about {need / 2**30:.1f} GiB, "
                        f"{free / 2**30:.1f} GiB are free; free some space or choose another folder", field="out",
                        zh=f"out：{root} 磁盘空间不足：合并后的模型约需 {need / 2**30:.1f} GiB，只剩 {free / 2**30:.1f} GiB；"
                           "请腾出空间或换个文件夹")
    available = psutil.virtual_memory().available
    if in_memory and available < need * 1.2:
        raise UserError(f"merge: not enough memory: this adapter is merged with the whole model in memory, about "
                        f"{need * 1.2 / 2**30:.1f} GiB of RAM, and {available / 2**30:.1f} GiB are free; close other "
                        "programs (or stop a running chat)",
                        zh=f"merge：内存不足：这个适配器要和整个模型一起在内存中合并，约需 {need * 1.2 / 2**30:.1f} GiB 内存，"
                           f"只剩 {available / 2**30:.1f} GiB；请关闭其他程序（或停止正在进行的对话）")


def _stored_bytes_per_weight(folder: str) -> int:
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return 2
    return BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "bfloat16"), 2)

