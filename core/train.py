"""`python -m core train`: QLoRA fine-tuning of a causal LM on a prepared dataset.

The story of a run: build the settings once, check the run folder and the data,
tokenize the rendered segments (the loss mask comes from the template), load the
base model (4-bit NF4 on a GPU, plain LoRA elsewhere), wrap it in LoRA, hand it to
trl's SFTTrainer, and save the adapter with everything chat and merge need to use it.

The run folder: config.json (the settings asked for), used.json (the ones the machine decides, such as 4-bit
loading, as this run applied them), status.json, metrics.jsonl, train.log, checkpoints/, adapter/, and
.lock, held by the one process that trains it. Checkpoints and the adapter appear whole or not
at all (core/saving.py); a full disk, a NaN or a second trainer ends the run with the cause in words.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core import gpus, logs, models, runs, saving
from core.config import TORCH_OPTIMIZERS, Parser, TrainConfig, add_arguments, preset
from core.errors import Text, UserError
from core.status import write_json
from core.template import Template
from core.tracking import leave_out
from core.tracking import setup as tracking_setup

log = logging.getLogger("qlora_studio.train")
STATE_ZH = {"finished": "完成", "stopped": "停止"}  # a run's end, in the story's Chinese lines
VERDICT_ZH = {"better": "变好了", "worse": "变差了", "same": "没有变化", "unknown": "不知道"}

# Files a run folder may hold before it holds a run: the supervisor's, and the settings a start that failed before
# training wrote (used.json, written again by the next start).
PRESTART_FILES = {"config.json", "train.log", "status.json", ".lock", "used.json"}


# ---- the command line --------------------------------------------------------------------
def cli(argv: list[str]) -> int:
    """`python -m core train --data DIR --out RUN [--preset P] [--config FILE] [any setting]`."""
    parser = Parser(prog="python -m core train", description="QLoRA fine-tune a model on a prepared dataset.")
    parser.add_argument("--config", help="A run's config.json to start from; flags given too override it.")
    add_arguments(parser, TrainConfig)
    flags = vars(parser.parse_args(argv))
    cfg = build_config(flags)
    leave_out(cfg.report_to)
    if cfg.optim in TORCH_OPTIMIZERS:
        models.leave_out_bitsandbytes(cfg.model)
    picked = gpus.parse(cfg.gpus)
    if len(picked) > 1 and "LOCAL_RANK" not in os.environ:
        # Several GPUs from a terminal: the same command again under torchrun, one process per GPU.
        import subprocess
        import sys

        command = gpus.command([sys.executable, "-m", "core"], ["train", *argv], len(picked))
        return subprocess.run(command, env=gpus.narrow(dict(os.environ), picked)).returncode
    result = train(cfg)
    if gpus.rank() == 0:  # the run's result, once
        print(json.dumps(result, ensure_ascii=False))
    return 0 if result["state"] in ("finished", "stopped") else 1


def build_config(flags: dict) -> TrainConfig:
    """The one TrainConfig of a run: a --config file or a preset, with the flags on top."""
    flags = dict(flags)
    config_file = flags.pop("config", None)
    if config_file:
        cfg = TrainConfig.from_dict({**TrainConfig.load(config_file).to_dict(), **flags})
    else:
        # Without a GPU the default preset is sized for the CPU; flags given still win.
        cfg = preset(flags.pop("preset", "default"), cpu=not gpus.visible(), **flags)
    cfg.check()
    return cfg


# ---- the run -----------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    """Run one fine-tuning job to the end (or a stop request); returns the final status."""
    # Growing segments instead of fixed blocks: packed batches vary in shape, and fragmentation
    # otherwise strands a GiB or more of GPU memory (seen on 13B at batch 8).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    # Run by hand on a machine with several GPUs: train on the chosen one, else the first (CUDA reads
    # this when it starts; a launcher's ranks are left as it set them).
    cfg.check()
    picked = gpus.parse(cfg.gpus)
    os.environ.update(gpus.narrow(dict(os.environ), picked[:1]) if "LOCAL_RANK" not in os.environ else {})
    run = Path(cfg.out).expanduser().resolve()
    # Data-parallel (torchrun): every rank trains; rank 0 alone holds the lock and writes the run's files.
    main = gpus.rank() == 0
    dataset, folder, checkpoint = check_input(cfg, main=main)
    logs.quiet(warnings=True)  # train.log: our lines and real warnings, not loading bars
    from core.status import Status, clear_stop, explain

    run.mkdir(parents=True, exist_ok=True)
    # A second trainer of this run is refused here, before it writes anything.
    with runs.lock(run) if main else contextlib.nullcontext(), _noting_interrupts() as interrupted:
        handler = logs.to_file(run / "train.log") if main else logs.rank_console(gpus.rank())
        told = logs.story_to(run / logs.STORY) if main else None
        status = None
        try:
            status = Status(run if main else None, **saving.progress_so_far(run, checkpoint))
            return _train(cfg, run, dataset, folder, status)
        except BaseException as e:
            # A stop while the libraries are still importing can surface as any error: an import cut in half
            # leaves a module that fails the next time it is imported. Interrupted before training (while it
            # trains, the trainer's own handlers take the signal), the run stopped.
            if isinstance(e, KeyboardInterrupt) or interrupted.is_set():
                log.info("stopped before the first step", extra=logs.zh("在第一步之前停止了"))
                if status is not None:
                    status.last_word(log, state="stopped", ended=time.time(),
                                     hint=Text("stopped before training began: nothing to keep",
                                               "在训练开始前就停止了：没有可保留的内容"))
                raise KeyboardInterrupt from None

            error, hint = explain(e)
            log.error("run failed: %s", error, extra=logs.zh(f"训练失败：{getattr(error, 'zh', error)}"))
            log.debug("%s", traceback.format_exc())  # train.log keeps it; a terminal gets the one line
            if status is None:  # status.json itself could not be written: the error speaks for itself
                raise
            status.last_word(log, state="failed", error=error, hint=hint, ended=time.time())
            if isinstance(e, UserError):
                raise
            return status.data
        finally:
            if main:
                clear_stop(run)  # answered: a later resume starts afresh
            for h in (handler, told) if told else (handler,):
                logging.getLogger("qlora_studio").removeHandler(h)
                h.close()
            # The model and trainer hold each other: collected now, their GPU memory is free for the caller (a
            # 13B's 10 GB otherwise stayed taken until the collector ran, and a chat loaded next fitted less).
            gpus.release_memory()


@contextlib.contextmanager
def _noting_interrupts():
    """An event set once Ctrl-C or the panel's Stop (SIGINT) reaches this process; the signal still interrupts
    as usual. The trainer's own handlers (core.callbacks) take over while it trains."""
    seen = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def interrupted(sig, frame):
        seen.set()
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, interrupted)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, before)


def _check_learning(run: Path, model, tokenizer, template, eval_rows, eval_file: Path) -> None:
    """learned.json: did the run learn (eval loss and unseen answers, base against tuned)? Never fails the run."""
    from core import learned

    log.info("checking what the run learned: eval loss and %d unseen questions, base model against tuned",
             learned.PROMPTS, extra=logs.zh(f"检查这次训练学到了什么：评估损失和 {learned.PROMPTS} 个没见过的问题，基础模型对比微调后的模型"))
    try:
        summary = learned.summarize(model, tokenizer, template, eval_rows, eval_file)
        learned.write(run, summary)
    except Exception as e:  # noqa: BLE001 - the adapter is saved; a failed check only loses the summary
        log.warning("could not check what the run learned: %s", e, extra=logs.zh(f"无法检查这次训练学到了什么：{e}"))
        return
    log.info("eval loss %s before, %s after: %s", summary["eval_loss_before"], summary["eval_loss_after"],
             summary["verdict"], extra=logs.zh(f"评估损失：训练前 {summary['eval_loss_before']}，训练后 "
                                               f"{summary['eval_loss_after']}：{VERDICT_ZH.get(summary['verdict'], summary['verdict'])}"))


def check_input(cfg: TrainConfig, fetch: bool = True, main: bool = True) -> tuple[Path, str, Path | None]:
    """Refuse bad input before anything is written; the data folder, the model's folder, the checkpoint to resume.

    The panel calls this too, with fetch=False, before it starts a run: the same check, the same words.
    `main` False: another rank of a data-parallel run, which finds rank 0's files already there.
    """
    cfg.check()
    picked = gpus.parse(cfg.gpus)
    if picked:
        have = gpus.count()
        if not have:
            raise UserError("gpus: this machine has no GPU; leave GPUs empty to train on the CPU", field="gpus",
                            zh="gpus：本机没有 GPU；GPU 留空即可在 CPU 上训练")
        missing = [g for g in picked if int(g) >= have]
        if missing:
            raise UserError(f"gpus: there is no GPU {missing[0]}; this machine has {have} "
                            f"(numbered 0 to {have - 1})", field="gpus",
                            zh=f"gpus：没有 GPU {missing[0]}；本机有 {have} 块（编号 0 到 {have - 1}）")
    run = Path(cfg.out).expanduser().resolve()
    data = Path(cfg.data).expanduser()
    if not (data / "manifest.json").is_file() or not (data / "train.jsonl").is_file():
        raise UserError(f"data: {cfg.data} is not a prepared dataset; make one in the Data tab or with "
                        "`python -m core prepare`", field="data",
                        zh=f"data：{cfg.data} 不是已准备好的数据集；请在“数据”页或用 `python -m core prepare` 生成")
    if run.exists() and not run.is_dir():
        raise UserError(f"out: {cfg.out} is a file; choose a new run folder", field="out",
                        zh=f"out：{cfg.out} 是文件，请选择新的运行文件夹")
    extra = sorted(p.name for p in run.iterdir() if p.name not in PRESTART_FILES) if run.is_dir() else []
    if extra and not cfg.resume and main:
        raise UserError(f"out: run folder {cfg.out} already holds a run ({extra[0]}); choose a new folder "
                        "or resume it", field="out",
                        zh=f"out：运行文件夹 {cfg.out} 里已有一次运行（{extra[0]}）；请选择新文件夹或继续这次运行")
    checkpoint = None
    if cfg.resume:
        checkpoint, skipped = saving.newest_checkpoint(run)
        if checkpoint is None:
            why = "".join(f"; {p.name}: {reason}" for p, reason in skipped)
            raise UserError(f"resume: {cfg.out} has no complete checkpoint to resume from{why}", field="resume",
                            zh=f"resume：{cfg.out} 没有可用于继续训练的完整检查点{why}")
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
    main = gpus.rank() == 0
    template = Template.from_dict(read_manifest(data).get("template"))
    if main and (not (run / "config.json").is_file() or cfg.resume):
        cfg.save(run / "config.json")  # never a secret: keys come from the environment only

    dev = parts.device(cfg)
    if main:  # what this machine makes of the settings (a CPU: no 4-bit, float32), before anything can fail
        write_json(run / runs.USED, parts.used(cfg, dev))
    if dev.cuda:  # the metrics' memory peak is this run's, also where train() runs in a process that held other models
        torch.cuda.reset_peak_memory_stats()
    status.update(device=dev.name, mode=dev.mode)
    log.info("run %s: model %s, data %s (%s template), preset %s", run, cfg.model, data, template.label, cfg.preset,
             extra=logs.zh(f"训练记录 {run}：模型 {cfg.model}，数据 {data}（{template.label} 模板），预设 {cfg.preset}"))
    log.info("device %s; %s", dev.name, dev.why, extra=logs.zh(f"设备 {dev.name}；{getattr(dev.why, 'zh', dev.why)}"))
    work = _share(cfg)  # the settings one process of a data-parallel run trains with
    if dev.cuda and cfg.liger_kernels and not parts.has_liger():
        log.info("liger_kernels: the liger-kernel package is not installed; using the model's own layers",
                 extra=logs.zh("liger_kernels：没有安装 liger-kernel 包；改用模型自己的层"))
    if cfg.offload_activations:
        log.info("offload_activations: %s", "saved activations go to CPU memory" if dev.cuda else "no GPU, nothing to offload (ignored)",
                 extra=logs.zh("offload_activations：" + ("为反向传播保存的激活值放在 CPU 内存" if dev.cuda
                                                          else "没有 GPU，无需转移（已忽略）")))
    # Pinned while the model loads, instead of during the first step.
    arena = parts.pinned_arena(work, folder) if cfg.offload_activations and dev.cuda else None
    resume = saving.resume_point(run, tidy=main) if cfg.resume else None  # (checkpoint, its step, what was skipped)
    if resume:
        status.update(resumed_from=resume[0].name, warning=resume[2])
    stop = StopFlag(run)
    stop.install()

    tokenizer = models.load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)

    def rows():
        train_rows = parts.tokenized(data / "train.jsonl", tokenizer, work)
        eval_rows = parts.tokenized(data / "eval.jsonl", tokenizer, work) if (data / "eval.jsonl").is_file() else None
        log.info("%d training rows%s", len(train_rows), f", {len(eval_rows)} eval rows" if eval_rows else "",
                 extra=logs.zh(f"{len(train_rows)} 行训练数据" + (f"，{len(eval_rows)} 行评估数据" if eval_rows else "")))
        return train_rows, eval_rows

    # The rows are tokenized while the model loads (the tokenizer and the loading both let go of the GIL). Loading the
    # tokenizer there too made the 13B's loading slower on an H200 (4.6-4.8 s became 4.8-7.3 s; docs/BENCHMARKS.md).
    with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        tokenizing = pool.submit(rows)
        loading = time.time()
        model = parts.load_model(work, folder, dev)
        took = time.time() - loading
        log.info("base model loaded in %.1f s", took, extra=logs.zh(f"基础模型加载用时 {took:.1f} 秒"))
        train_rows, eval_rows = tokenizing.result()  # a problem with the rows is raised here, in its own words

    tracking = tracking_setup(cfg.report_to, cfg.wandb_project, run) if main else []
    if resume and main:  # the steps after the checkpoint are trained again: their old lines would be doubled in the chart
        keep_metrics_until(run / "metrics.jsonl", resume[1])
    counter = Counting(None)
    progress = Progress(run / "metrics.jsonl" if main else None, status, stop, log, dev, counter)
    guard = Guard(status, log, fp16=dev.fp16)  # after Progress: it has the last say on saving
    trainer = parts.build(work, parts.sft_args(work, run, dev, tracking, eval_rows is not None), model, tokenizer,
                          train_rows, eval_rows, [progress, guard], counter, arena)
    counted = parts.count(trainer.model)
    log.info("trainable parameters: %s", counted, extra=logs.zh(f"可训练参数：{counted.replace(' of ', ' / ')}"))
    weights = trainer.trainable_bytes()
    # Fail now rather than after hours of training: room for a checkpoint (weights and Adam's two
    # moments) and for the adapter.
    saving.ensure_space(run, weights * (4 if cfg.save_steps else 1), saving.RESUME_HINT if resume else saving.START_HINT)

    if stop.agreed():  # asked while the model loaded: end before the first step, with nothing to keep
        stop.uninstall()
        log.info("stop requested before the first step: nothing was trained",
                 extra=logs.zh("在第一步之前收到停止请求：什么都没有训练"))
        status.update(state="stopped", ended=time.time(), hint=Text("stopped before training began: nothing to keep", "在训练开始前就停止了：没有可保留的内容"))
        return status.data
    try:
        trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    finally:
        progress.close()
        stop.uninstall()
    if not main:  # its part is done: rank 0 saves the adapter and reports how the run ended
        status.update(state="stopped" if stop.requested else "finished")
        return status.data
    if guard.problem:  # no adapter of NaN weights; the checkpoints before the problem stay
        raise UserError(guard.problem, hint=NAN_HINT)

    record = {"base_model": cfg.model, "template": template.to_dict(), "run": str(run), "config": cfg.to_dict()}
    adapter = saving.save_adapter(trainer.model, tokenizer, record, run, weights)
    state = "stopped" if stop.requested else "finished"
    if state == "finished" and eval_rows is not None:
        _check_learning(run, trainer.model, tokenizer, template, eval_rows, data / "eval.jsonl")
    log.info("%s at step %d; adapter saved to %s", state, trainer.state.global_step, adapter,
             extra=logs.zh(f"在第 {trainer.state.global_step} 步{STATE_ZH.get(state, state)}；适配器已保存到 {adapter}"))
    status.update(state=state, step=trainer.state.global_step, adapter=str(adapter), ended=time.time())
    if "wandb" in tracking:
        import wandb

        wandb.finish()
    return status.data


def _share(cfg: TrainConfig) -> TrainConfig:
    """The settings of one process of a data-parallel run: its part of each update (see core/plan.share)."""
    from core.plan import share

    n = gpus.world()
    if n <= 1:
        return cfg
    batch, accum, factor = share(cfg.batch_size, cfg.grad_accum, n)
    log.info("%d processes train together: %d rows x %d accumulation each, %d rows an update%s", n, batch, accum,
             batch * accum * n, f"; learning rate x {factor:.3g} for the larger update" if factor != 1 else "",
             extra=logs.zh(f"{n} 个进程一起训练：每个 {batch} 行 x 累积 {accum} 次，每次更新 {batch * accum * n} 行"
                           + (f"；更新变大，学习率 x {factor:.3g}" if factor != 1 else "")))
    return cfg.replace(batch_size=batch, grad_accum=accum, learning_rate=cfg.learning_rate * factor)
