"""`python -m core train`: QLoRA fine-tuning of a causal LM on a prepared dataset.

The story of a run: build the settings once, check the run folder and the data,
tokenize the rendered segments (the loss mask comes from the template), load the
base model (4-bit NF4 on a GPU, plain LoRA elsewhere), wrap it in LoRA, hand it to
trl's SFTTrainer, and save the adapter with everything chat and merge need to use it.

The run folder: config.json, status.json, metrics.jsonl, train.log, checkpoints/, adapter/, and
.lock, held by the one process that trains it. Checkpoints and the adapter appear whole or not
at all (core/saving.py); a full disk, a NaN or a second trainer ends the run with the cause in words.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path

from core import gpus, logs, models, runs, saving
from core.config import Parser, TrainConfig, add_arguments, preset
from core.errors import UserError
from core.template import Template
from core.tracking import setup as tracking_setup

log = logging.getLogger("qlora_studio.train")

# Files the supervisor may put into a run folder before it starts us.
PRESTART_FILES = {"config.json", "train.log", "status.json", ".lock"}


# ---- the command line --------------------------------------------------------------------
def cli(argv: list[str]) -> int:
    """`python -m core train --data DIR --out RUN [--preset P] [--config FILE] [any setting]`."""
    parser = Parser(prog="python -m core train", description="QLoRA fine-tune a model on a prepared dataset.")
    parser.add_argument("--config", help="A run's config.json to start from; flags given too override it.")
    add_arguments(parser, TrainConfig)
    flags = vars(parser.parse_args(argv))
    result = train(build_config(flags))
    print(json.dumps(result, ensure_ascii=False))
    return 0 if result["state"] in ("finished", "stopped") else 1


def build_config(flags: dict) -> TrainConfig:
    """The one TrainConfig of a run: a --config file or a preset, with the flags on top."""
    flags = dict(flags)
    config_file = flags.pop("config", None)
    if config_file:
        cfg = TrainConfig.from_dict({**TrainConfig.load(config_file).to_dict(), **flags})
    else:
        cfg = preset(flags.pop("preset", "default"), **flags)
    cfg.check()
    return cfg


# ---- the run -----------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    """Run one fine-tuning job to the end (or a stop request); returns the final status."""
    # Growing segments instead of fixed blocks: packed batches vary in shape, and fragmentation
    # otherwise strands a GiB or more of GPU memory (seen on 13B at batch 8).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    # Run by hand on a machine with several GPUs: train on the first (CUDA reads this when it starts).
    os.environ.update(gpus.one())
    cfg.check()
    run = Path(cfg.out).expanduser().resolve()
    dataset, folder, checkpoint = check_input(cfg)
    logs.quiet(warnings=True)  # train.log: our lines and real warnings, not loading bars
    from core.status import Status, clear_stop, explain

    run.mkdir(parents=True, exist_ok=True)
    with runs.lock(run):  # a second trainer of this run is refused here, before it writes anything
        handler = logs.to_file(run / "train.log")
        status = None
        try:
            status = Status(run, **saving.progress_so_far(run, checkpoint))
            return _train(cfg, run, dataset, folder, status)
        except KeyboardInterrupt:  # interrupted before training began: nothing to save
            log.info("stopped before the first step")
            if status is not None:
                status.last_word(log, state="stopped", ended=time.time(),
                                 hint="stopped before training began: nothing to keep")
            raise
        except BaseException as e:
            error, hint = explain(e)
            log.error("run failed: %s", error)
            log.debug("%s", traceback.format_exc())  # train.log keeps it; a terminal gets the one line
            if status is None:  # status.json itself could not be written: the error speaks for itself
                raise
            status.last_word(log, state="failed", error=error, hint=hint, ended=time.time())
            if isinstance(e, UserError):
                raise
            return status.data
        finally:
            clear_stop(run)  # answered: a later resume starts afresh
            logging.getLogger("qlora_studio").removeHandler(handler)
            handler.close()


def check_input(cfg: TrainConfig, fetch: bool = True) -> tuple[Path, str, Path | None]:
    """Refuse bad input before anything is written; the data folder, the model's folder, the checkpoint to resume.

    The panel calls this too, with fetch=False, before it starts a run: the same check, the same words.
    """
    cfg.check()
    run = Path(cfg.out).expanduser().resolve()
    data = Path(cfg.data).expanduser()
    if not (data / "manifest.json").is_file() or not (data / "train.jsonl").is_file():
        raise UserError(f"data: {cfg.data} is not a prepared dataset; make one in the Data tab or with "
                        "`python -m core prepare`", field="data")
    if run.exists() and not run.is_dir():
        raise UserError(f"out: {cfg.out} is a file; choose a new run folder", field="out")
    extra = sorted(p.name for p in run.iterdir() if p.name not in PRESTART_FILES) if run.is_dir() else []
    if extra and not cfg.resume:
        raise UserError(f"out: run folder {cfg.out} already holds a run ({extra[0]}); choose a new folder "
                        "or resume it", field="out")
    checkpoint = None
    if cfg.resume:
        checkpoint, skipped = saving.newest_checkpoint(run)
        if checkpoint is None:
            why = "".join(f"; {p.name}: {reason}" for p, reason in skipped)
            raise UserError(f"resume: {cfg.out} has no complete checkpoint to resume from{why}", field="resume")
    folder = models.resolve(cfg.model, fetch=fetch)  # a missing model folder is refused here, with its name
    return data, folder, checkpoint


def _train(cfg: TrainConfig, run: Path, data: Path, folder: str, status) -> dict:
    import torch
    from transformers import PrinterCallback
    from trl import SFTConfig

    from core.callbacks import NAN_HINT, Guard, Progress, StopFlag, keep_metrics_until
    from core.checkpoints import trainer_class
    from core.packing import Counting, PackedRows

    torch.manual_seed(cfg.seed)
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    template = Template.from_dict(manifest.get("template"))
    if not (run / "config.json").is_file() or cfg.resume:
        cfg.save(run / "config.json")  # never a secret: keys come from the environment only

    device, mode, why, cuda = _device(cfg)
    status.update(device=device, mode=mode)
    log.info("run %s: model %s, data %s (%s template), preset %s", run, cfg.model, data, template.label, cfg.preset)
    log.info("device %s; %s", device, why)
    if cuda and cfg.liger_kernels and not _has_liger():
        log.info("liger_kernels: the liger-kernel package is not installed; using the model's own layers")
    arena = None
    if cfg.offload_activations:
        log.info("offload_activations: %s", "saved activations go to CPU memory" if cuda else "no GPU, nothing to offload (ignored)")
        if cuda:
            arena = _pinned_arena(cfg, folder)  # pinned while the model loads, instead of during the first step

    resume = saving.resume_point(run) if cfg.resume else None  # (checkpoint, its step, what was skipped)
    if resume:
        status.update(resumed_from=resume[0].name, warning=resume[2])
    stop = StopFlag(run)
    stop.install()
    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    train_rows = _tokenized(data / "train.jsonl", tokenizer, cfg)
    eval_rows = _tokenized(data / "eval.jsonl", tokenizer, cfg) if (data / "eval.jsonl").is_file() else None
    log.info("%d training rows%s", len(train_rows), f", {len(eval_rows)} eval rows" if eval_rows else "")

    loading = time.time()
    model = _load_model(cfg, folder, cuda)
    log.info("base model loaded in %.1f s", time.time() - loading)
    tracking = tracking_setup(cfg.report_to, cfg.wandb_project, run)
    dtype = _compute_dtype(cfg, cuda)
    args = SFTConfig(
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
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        activation_offloading=False,  # core/offload.py instead (set below): it prefetches, and pins memory early
        fp16=cuda and dtype == torch.float16,
        bf16=dtype == torch.bfloat16,
        use_cpu=not cuda,
        # Liger's fused RMSNorm/SwiGLU/RoPE kernels: less activation memory, faster steps (GPU only).
        use_liger_kernel=cuda and cfg.liger_kernels and _has_liger(),
        max_length=cfg.max_seq_length,
        packing=cfg.packing,
        packing_strategy="bfd",
        completion_only_loss=cfg.loss_on == "response",
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must show as NaN (the filter logged 0.0), so Guard sees it
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        eval_strategy="steps" if cfg.eval_steps and eval_rows else "no",
        eval_steps=cfg.eval_steps or None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=tracking,
        run_name=run.name,
        disable_tqdm=True,  # train.log gets one clear line per logging step instead of progress bars
        dataloader_pin_memory=cuda,
    )
    if resume:  # the steps after the checkpoint are trained again: their old lines would be doubled in the chart
        keep_metrics_until(run / "metrics.jsonl", resume[1])
    progress = Progress(run / "metrics.jsonl", status, stop, log, cuda)
    progress.first_line = {"device": device, "mode": mode}
    guard = Guard(status, log, fp16=cuda and dtype == torch.float16)  # after Progress: it has the last say on saving
    trainer = trainer_class()(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                              processing_class=tokenizer, callbacks=[progress, guard])
    trainer.remove_callback(PrinterCallback)  # Progress already writes one line per logging step
    if arena is not None:
        from core.offload import Offload

        if hasattr(trainer, "maybe_activation_offload_context"):
            trainer.maybe_activation_offload_context = Offload(arena)  # trl enters it around each micro-batch
        else:
            log.warning("offload_activations: this trl version has no place for it; activations stay on the GPU")
    # Packed rows stay separate rows (see core/packing.py); either way count the real tokens.
    collator = PackedRows(tokenizer.pad_token_id) if cfg.packing else trainer.data_collator
    trainer.data_collator = progress.counter = Counting(collator, trainer.model)
    if cuda and dtype == torch.float16:
        # The fp16 grad scaler needs float32 master weights to unscale into.
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    log.info("trainable parameters: %s", _count(trainer.model))
    weights = trainer.trainable_bytes()
    # Fail now rather than after hours of training: room for a checkpoint (weights and Adam's two
    # moments) and for the adapter.
    saving.ensure_space(run, weights * (4 if cfg.save_steps else 1),
                        saving.RESUME_HINT if resume else saving.START_HINT)

    if stop.requested:  # asked while the model loaded: end before the first step, with nothing to keep
        stop.uninstall()
        log.info("stop requested before the first step: nothing was trained")
        status.update(state="stopped", ended=time.time(), hint="stopped before training began: nothing to keep")
        return status.data
    try:
        trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    finally:
        progress.close()
        stop.uninstall()
    if guard.problem:  # no adapter of NaN weights; the checkpoints before the problem stay
        raise UserError(guard.problem, hint=NAN_HINT)

    record = {"base_model": cfg.model, "template": template.to_dict(), "run": str(run), "config": cfg.to_dict()}
    adapter = saving.save_adapter(trainer.model, tokenizer, record, run, weights)
    state = "stopped" if stop.requested else "finished"
    log.info("%s at step %d; adapter saved to %s", state, trainer.state.global_step, adapter)
    status.update(state=state, step=trainer.state.global_step, adapter=str(adapter), ended=time.time())
    if "wandb" in tracking:
        import wandb

        wandb.finish()
    return status.data


# ---- pieces of the story -----------------------------------------------------------------
def _device(cfg: TrainConfig) -> tuple[str, str, str, bool]:
    """(device, mode, why) in words, and whether a CUDA GPU is used."""
    import torch

    if not torch.cuda.is_available():
        # bitsandbytes has a CPU 4-bit path, but it is slower than float32 on CPU and needs extra
        # kernels; float16 autocast fails on CPU. Plain LoRA in float32 always works.
        dt = "bfloat16" if cfg.compute_dtype == "bfloat16" else "float32"
        return "cpu", f"LoRA {dt} (no GPU)", f"no GPU: plain LoRA in {dt}", False
    device = f"cuda:0 {torch.cuda.get_device_name(0)}"
    dt = str(_compute_dtype(cfg, True)).removeprefix("torch.")
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dt]
    if cfg.quantization == "4bit":
        dq = " + double quant" if cfg.double_quant else ""
        return device, f"4-bit NF4 ({short} compute)", f"QLoRA: 4-bit NF4{dq}, {short} compute", True
    return device, f"LoRA {dt}", f"plain LoRA in {dt} (quantization off)", True


def _has_liger() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def _pinned_arena(cfg: TrainConfig, folder: str):
    """Start reserving the pinned CPU memory that offloaded activations will use (in a thread)."""
    import psutil
    from transformers import AutoConfig

    from core.offload import Arena, arena_bytes

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError):
        return Arena()  # the model load reports the problem in its own words
    need = arena_bytes(config, cfg.batch_size, cfg.max_seq_length)
    return Arena(min(need, psutil.virtual_memory().available // 2))


def _compute_dtype(cfg: TrainConfig, cuda: bool):
    import torch

    if not cuda:
        return torch.bfloat16 if cfg.compute_dtype == "bfloat16" else torch.float32
    if cfg.compute_dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, cfg.compute_dtype)


def _tokenized(path: Path, tokenizer, cfg: TrainConfig):
    """input_ids + completion_mask per row, segment by segment, so the mask follows the template exactly."""
    from datasets import Dataset

    bos = models.leading_bos(tokenizer)
    rows, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                segments = json.loads(line)["segments"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}, line {n}: not a prepared row (no 'segments'); prepare the data again") from None
            ids, mask = ([bos], [0]) if bos is not None else ([], [])
            for text, trained in segments:
                piece = tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += piece
                mask += [1 if trained else 0] * len(piece)
            ids, mask = ids[: cfg.max_seq_length], mask[: cfg.max_seq_length]
            if cfg.loss_on == "response" and not any(mask):
                dropped += 1  # the prompt alone filled max_seq_length: nothing left to learn from
                continue
            rows.append({"input_ids": ids, "completion_mask": mask})
    if dropped:
        log.info("%s: %d rows skipped: their prompt fills max_seq_length (%d)", path.name, dropped, cfg.max_seq_length)
    if not rows:
        raise UserError(f"{path}: no usable rows; raise max_seq_length or prepare the data again")
    return Dataset.from_list(rows)


def _load_model(cfg: TrainConfig, folder: str, cuda: bool):
    """The base model (4-bit on a GPU when asked) with fresh LoRA layers on it."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = _compute_dtype(cfg, cuda)
    kw = dict(trust_remote_code=cfg.trust_remote_code)
    try:
        if cuda and cfg.quantization == "4bit":
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=dtype)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map={"": 0}, **kw)
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
                model.to("cuda:0")
    except (OSError, ValueError) as e:
        raise UserError(f"model: cannot load {cfg.model}: {str(e).splitlines()[0]}", field="model") from None
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
        raise UserError(f"target_modules: {str(e).splitlines()[0]}", field="target_modules") from None


def _count(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
