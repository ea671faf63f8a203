"""The parts a training run is built from: where it runs, the rows, the model with LoRA, the trainer.

core/train.py tells the story of a run; each piece it needs is built here from the one
TrainConfig. torch, transformers, peft and trl are imported inside the functions, so that a
check before a run (the panel's, say) never pays for them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from core import gpus, logs, models
from core.config import TrainConfig, on_cpu
from core.errors import Text, UserError

log = logging.getLogger("qlora_studio.train")


@dataclass(frozen=True)
class Device:
    """Where a run trains and in which number format, in the words the page and the log use."""

    name: str  # "cpu", or "cuda:0 NVIDIA H200"
    mode: str  # what the page shows: "4-bit NF4 (bf16 compute)", "LoRA float32 (no GPU)"
    why: str  # the log line
    cuda: bool
    dtype: object  # the torch dtype of the math
    index: int = 0  # which visible GPU (a data-parallel rank's own)

    @property
    def fp16(self) -> bool:
        """fp16 on a GPU: the grad scaler, float32 trainable weights and norms."""
        import torch

        return self.cuda and self.dtype == torch.float16


def device(cfg: TrainConfig) -> Device:
    """The device and the number format of the math, decided once for the whole run."""
    import torch

    if not torch.cuda.is_available():
        # bitsandbytes has a CPU 4-bit path, but it is slower than float32 on CPU and needs extra
        # kernels; float16 autocast fails on CPU. Plain LoRA in float32 always works.
        dt = on_cpu(cfg.compute_dtype)["compute_dtype"]
        return Device("cpu", f"LoRA {dt} (no GPU)", Text(f"no GPU: plain LoRA in {dt}", f"没有 GPU：用 {dt} 做普通 LoRA"),
                      False, getattr(torch, dt))
    if cfg.compute_dtype == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = getattr(torch, cfg.compute_dtype)
    index = gpus.local_rank()
    torch.cuda.set_device(index)
    name = f"cuda:{index} {torch.cuda.get_device_name(index)}"
    dt = str(dtype).removeprefix("torch.")
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dt]
    if cfg.quantization == "4bit":
        dq = " + double quant" if cfg.double_quant else ""
        why = Text(f"QLoRA: 4-bit NF4{dq}, {short} compute",
                   f"QLoRA：4-bit NF4{' + 双重量化' if dq else ''}，{short} 计算")
        return Device(name, f"4-bit NF4 ({short} compute)", why, True, dtype, index)
    return Device(name, f"LoRA {dt}", Text(f"plain LoRA in {dt} (quantization off)", f"用 {dt} 做普通 LoRA（不量化）"),
                  True, dtype, index)


def has_liger() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def uses_liger(cfg: TrainConfig, dev: Device) -> bool:
    """Liger's fused kernels: on a GPU, when asked for and installed."""
    return dev.cuda and cfg.liger_kernels and has_liger()


def fp8_refused(cfg: TrainConfig, dev: Device) -> str | None:
    """Why fp8_base, asked for, cannot apply here (one line), or None (it applies, or it is off)."""
    if cfg.fp8_base == "off":
        return None
    import torch

    from core import fp8

    why = fp8.supported(dev.index)  # "no GPU" on a CPU
    if not why and not (cfg.quantization == "4bit" and dev.dtype == torch.bfloat16):
        why = "it is for 4-bit base weights with bf16 compute"
    return why


def used(cfg: TrainConfig, dev: Device) -> dict:
    """The settings the machine may change (a CPU trains without 4-bit loading, in float32, without GPU kernels), as
    this run applies them on `dev` (config.json keeps what was asked for).

    core.train writes them into RUN/used.json when the run starts, so what the run really did can be shown.
    """
    if not dev.cuda:
        return on_cpu(cfg.compute_dtype)
    quantized = cfg.quantization == "4bit"
    return {"quantization": "4bit" if quantized else "none",
            "double_quant": quantized and cfg.double_quant,
            "compute_dtype": str(dev.dtype).removeprefix("torch."),
            "liger_kernels": uses_liger(cfg, dev),
            "fp8_base": "off" if fp8_refused(cfg, dev) else cfg.fp8_base,
            "offload_activations": cfg.offload_activations}


def pinned_arena(cfg: TrainConfig, folder: str):
    """Start reserving the pinned CPU memory that offloaded activations will use (in a thread)."""
    import psutil
    from transformers import AutoConfig

    from core.fit import arena_bytes
    from core.offload import Arena

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError):
        return Arena()  # the model load reports the problem in its own words
    need = arena_bytes(config, cfg.batch_size, cfg.max_seq_length)
    return Arena(min(need, psutil.virtual_memory().available // 2))


def tokenized(path: Path, tokenizer, cfg: TrainConfig):
    """input_ids + completion_mask per row, segment by segment, so the mask follows the template exactly."""
    from datasets import Dataset, disable_progress_bars

    from core import data

    disable_progress_bars()  # trl maps the rows again; its bars would fill train.log (once per rank)
    bos = models.leading_bos(tokenizer)
    rows, dropped = [], 0

    def add(batch: list) -> None:
        """Tokenize a batch of rows (core.data.segment_ids: 1.3-1.4x a call per segment on 2 cores,
        bench/tokenize_speed.py) and append them."""
        nonlocal dropped
        for segments, pieces in zip(batch, data.segment_ids(tokenizer, batch), strict=True):
            ids, mask = ([bos], [0]) if bos is not None else ([], [])
            for (_, trained), piece in zip(segments, pieces, strict=True):
                ids += piece
                mask += [1 if trained else 0] * len(piece)
            ids, mask = ids[: cfg.max_seq_length], mask[: cfg.max_seq_length]
            if cfg.loss_on == "response" and not any(mask):
                dropped += 1  # the prompt alone filled max_seq_length: nothing left to learn from
                continue
            rows.append({"input_ids": ids, "completion_mask": mask})

    batch = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                segments = [(str(text), bool(trained)) for text, trained in json.loads(line)["segments"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UserError(f"{path}, line {n}: not a prepared row (no 'segments'); prepare the data again",
                                zh=f"{path} 第 {n} 行：不是准备好的数据行（没有 'segments'）；请重新准备数据") from None
            batch.append(segments)
            if len(batch) == data.TOKENIZE_BATCH:
                add(batch)
                batch = []
    add(batch)
    if dropped:
        log.info("%s: %d rows skipped: their prompt fills max_seq_length (%d)", path.name, dropped, cfg.max_seq_length,
                 extra=logs.zh(f"{path.name}：跳过 {dropped} 行：它们的提示已占满 max_seq_length（{cfg.max_seq_length}）"))
    if not rows:
        raise UserError(f"{path}: no usable rows; raise max_seq_length or prepare the data again",
                        zh=f"{path}：没有可用的行；请调大 max_seq_length 或重新准备数据")
    return Dataset.from_list(rows)


def load_model(cfg: TrainConfig, folder: str, device: Device):
    """The base model (4-bit on a GPU when asked) with fresh LoRA layers on it."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype, cuda = device.dtype, device.cuda
    kw = dict(trust_remote_code=cfg.trust_remote_code)
    try:
        if cuda and cfg.quantization == "4bit":
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=dtype)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": device.index}, **kw)
            if dtype == torch.float16:
                # fp16's narrow range needs float32 norms, embeddings and head (the classic QLoRA recipe).
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
            else:
                # bf16 has float32's range: upcasting would only turn the residual stream into float32,
                # doubling activation memory and costing about 1 GB of weights on a 13B model.
                for p in model.parameters():
                    p.requires_grad_(False)
                if cfg.gradient_checkpointing:
                    model.enable_input_require_grads()
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype if cuda else torch.float32, **kw)
            if cuda:
                model.to(f"cuda:{device.index}")
    except (OSError, ValueError) as e:
        raise UserError(f"model: cannot load {cfg.model}: {str(e).splitlines()[0]}", field="model",
                        zh=f"model：无法加载 {cfg.model}：{str(e).splitlines()[0]}") from None
    if cfg.fp8_base != "off":
        from core import fp8

        why = fp8_refused(cfg, device)
        if why:
            log.info("fp8_base: %s; ignored", why, extra=logs.zh(f"fp8_base：{why}；已忽略"))
        else:
            layers = fp8.use(model, cfg.fp8_base)
            log.info("fp8_base=%s: %d 4-bit layers multiply in FP8", cfg.fp8_base, layers,
                     extra=logs.zh(f"fp8_base={cfg.fp8_base}：{layers} 个 4-bit 层用 FP8 做乘法"))
    # Without a cache, transformers reads restarting position_ids as separate rows: packed rows
    # then attend only to themselves (with a cache it would treat them as one long row).
    model.config.use_cache = False
    targets = {"default": None, "all-linear": "all-linear"}.get(
        cfg.target_modules, [t.strip() for t in cfg.target_modules.split(",") if t.strip()])
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise UserError(f"target_modules: {str(e).splitlines()[0]}", field="target_modules",
                        zh=f"target_modules：{str(e).splitlines()[0]}") from None


def sft_args(cfg: TrainConfig, run: Path, dev: Device, tracking: list[str], evaluate: bool):
    """trl's SFTConfig for this run: the user's settings, and ours for logging, saving and offloading."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(run / "checkpoints"),
        max_steps=cfg.max_steps or -1,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the steps
        optim=cfg.optim,
        max_grad_norm=cfg.max_grad_norm,
        **_checkpointing(SFTConfig, cfg.gradient_checkpointing, cfg.fp8_base == "backward"),
        activation_offloading=False,  # core/offload.py instead (see build): it prefetches, and pins memory early
        fp16=dev.fp16,
        bf16=dev.dtype == torch.bfloat16,
        use_cpu=not dev.cuda,
        # Liger's fused RMSNorm/SwiGLU/RoPE kernels: less activation memory, faster steps (GPU only).
        use_liger_kernel=uses_liger(cfg, dev),
        max_length=cfg.max_seq_length,
        packing=cfg.packing,
        packing_strategy="bfd",
        completion_only_loss=cfg.loss_on == "response",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,  # the chart, tokens/s and the time left appear from the first step
        logging_nan_inf_filter=False,  # a NaN loss must show as NaN (the filter logged 0.0), so Guard sees it
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        eval_strategy="steps" if cfg.eval_steps and evaluate else "no",
        eval_steps=cfg.eval_steps or None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=tracking,
        run_name=run.name,
        disable_tqdm=True,  # train.log gets one clear line per logging step instead of progress bars
        dataloader_pin_memory=dev.cuda,
        # LoRA leaves every frozen weight out of the gradient: no search for unused ones each step.
        ddp_find_unused_parameters=False if gpus.world() > 1 else None,
    )


def _checkpointing(args_class, on: bool, fp8_recompute: bool = False) -> dict:
    """Recomputing activations, under the name this transformers knows (it became `activation_checkpointing`);
    with `fp8_recompute`, the recomputed forward passes multiply in FP8 (core.fp8, mode "backward")."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(args_class)}
    name = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    kwargs = {"use_reentrant": False}
    if fp8_recompute:
        from core import fp8

        kwargs["context_fn"] = fp8.RECOMPUTE
    return {name: on, f"{name}_kwargs": kwargs}


def build(cfg: TrainConfig, args, model, tokenizer, train_rows, eval_rows, callbacks: list, counter, arena):
    """trl's SFTTrainer with our checkpoints (no pickles), callbacks, token counter and offloading."""
    from transformers import PrinterCallback

    from core.checkpoints import trainer_class
    from core.packing import PackedRows

    trainer = trainer_class()(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                              processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # Progress already writes one line per logging step
    if arena is not None:
        from core.offload import Offload

        if hasattr(trainer, "maybe_activation_offload_context"):
            trainer.maybe_activation_offload_context = Offload(arena)  # trl enters it around each micro-batch
        else:
            log.warning("offload_activations: this trl version has no place for it; activations stay on the GPU",
                        extra=logs.zh("offload_activations：这个版本的 trl 不支持它；激活值留在 GPU 上"))
    # Packed rows stay separate rows (see core/packing.py); either way count the real tokens.
    counter.collator = PackedRows(tokenizer.pad_token_id) if cfg.packing else trainer.data_collator
    counter.model = trainer.model
    trainer.data_collator = counter
    if args.fp16:
        # The fp16 grad scaler needs float32 master weights to unscale into.
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return trainer


def count(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
