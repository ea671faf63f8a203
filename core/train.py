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
    from core import fit

    fit.refuse_train(cfg, folder)  # far past this machine's memory: refused now, not after loading the model
    return data, folder, checkpoint


def _train(cfg: TrainConfig, run: Path, data: Path, folder: str, status) -> dict:
    import torch

    from core import trainer as parts
    from core.callbacks import NAN_HINT, Guard, Progress, StopFlag, keep_metrics_until
    from core.data import read_manifest
    from core.packing import Counting

    torch.manual_seed(cfg.seed)
    template = Template.from_dict(read_manifest(data).get("template"))
    if not (run / "config.json").is_file() or cfg.resume:
        cfg.save(run / "config.json")  # never a secret: keys come from the environment only

    dev = parts.device(cfg)
    status.update(device=dev.name, mode=dev.mode)
    log.info("run %s: model %s, data %s (%s template), preset %s", run, cfg.model, data, template.label, cfg.preset)
    log.info("device %s; %s", dev.name, dev.why)
    if dev.cuda and cfg.liger_kernels and not parts.has_liger():
        log.info("liger_kernels: the liger-kernel package is not installed; using the model's own layers")
    if cfg.offload_activations:
        log.info("offload_activations: %s", "saved activations go to CPU memory" if dev.cuda else "no GPU, nothing to offload (ignored)")
    # Pinned while the model loads, instead of during the first step.
    arena = parts.pinned_arena(cfg, folder) if cfg.offload_activations and dev.cuda else None
    resume = saving.resume_point(run) if cfg.resume else None  # (checkpoint, its step, what was skipped)
    if resume:
        status.update(resumed_from=resume[0].name, warning=resume[2])
    stop = StopFlag(run)
    stop.install()

    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    train_rows = parts.tokenized(data / "train.jsonl", tokenizer, cfg)
    eval_rows = parts.tokenized(data / "eval.jsonl", tokenizer, cfg) if (data / "eval.jsonl").is_file() else None
    log.info("%d training rows%s", len(train_rows), f", {len(eval_rows)} eval rows" if eval_rows else "")
    loading = time.time()
    model = parts.load_model(cfg, folder, dev)
    log.info("base model loaded in %.1f s", time.time() - loading)

    tracking = tracking_setup(cfg.report_to, cfg.wandb_project, run)
    if resume:  # the steps after the checkpoint are trained again: their old lines would be doubled in the chart
        keep_metrics_until(run / "metrics.jsonl", resume[1])
    counter = Counting(None)
    progress = Progress(run / "metrics.jsonl", status, stop, log, dev, counter)
    guard = Guard(status, log, fp16=dev.fp16)  # after Progress: it has the last say on saving
    trainer = parts.build(cfg, parts.sft_args(cfg, run, dev, tracking, eval_rows is not None), model, tokenizer,
                          train_rows, eval_rows, [progress, guard], counter, arena)
    log.info("trainable parameters: %s", parts.count(trainer.model))
    weights = trainer.trainable_bytes()
    # Fail now rather than after hours of training: room for a checkpoint (weights and Adam's two
    # moments) and for the adapter.
    saving.ensure_space(run, weights * (4 if cfg.save_steps else 1), saving.RESUME_HINT if resume else saving.START_HINT)

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
