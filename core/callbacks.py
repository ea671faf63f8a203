"""What a training run tells the outside world while it runs: status.json, metrics.jsonl, stop requests.

The panel's supervisor reads `status.json` (rewritten atomically) and follows
`metrics.jsonl` (one JSON object per logging step, flushed at once); a SIGINT or
SIGTERM asks the run to end after the current step; a loss, grad norm or weight
turned NaN or inf ends it at once, without saving what is broken.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

from transformers import TrainerCallback

from core.errors import Text
from core.logs import zh
from core.status import Status, stop_requested

NAMES_ZH = {"loss": "损失", "eval_loss": "评估损失", "learning_rate": "学习率", "tokens_per_second": "每秒tokens"}


def keep_metrics_until(path: Path, step: int) -> None:
    """Rewrite metrics.jsonl (atomically) without the lines after `step`: a resumed run logs those steps again."""
    from core.runs import read_metrics

    if not path.is_file():
        return
    kept = [m for m in read_metrics(path.parent) if (m.get("step") or 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in kept), encoding="utf-8")
    os.replace(tmp, path)


class StopFlag:
    """Turns SIGINT/SIGTERM, or the panel's stop file in the run folder, into a polite request.

    The file matters while the run starts: a signal that arrives before the handlers are installed
    is lost in a library's import, but the file is still there when the first step is about to begin.
    """

    def __init__(self, run: Path | None = None):
        self.event = threading.Event()
        self.run = run
        self._old = {}

    def install(self) -> None:
        # Signal handlers can only be set from the main thread (an in-process call from a worker can't).
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        self.event.set()

    @property
    def requested(self) -> bool:
        if not self.event.is_set() and self.run is not None and stop_requested(self.run):
            self.event.set()
        return self.event.is_set()

    def agreed(self) -> bool:
        """Whether any process of the run was asked to stop: every rank must stop at the same step."""
        if across_ranks(1.0 if self.requested else 0.0, "max"):
            self.event.set()
        return self.event.is_set()


def across_ranks(value: float, op: str = "sum") -> float:
    """`value` summed (or its max) over the processes of a data-parallel run; itself on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return value
    import torch

    # NCCL reduces tensors on the GPU, gloo on the CPU.
    where = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(value)], dtype=torch.float64, device=where)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.item()


class Progress(TrainerCallback):
    """Writes metrics.jsonl and keeps status.json's step current; honours a stop request."""

    def __init__(self, metrics_path: Path | None, status: Status, stop: StopFlag, log, device, counter=None):
        """`device` is core.trainer.Device (named on the first line); `counter` counts trained tokens.

        `metrics_path` None: another rank of a data-parallel run, which takes part in the counts and
        the stop decision but writes nothing.
        """
        self.file = open(metrics_path, "a", encoding="utf-8") if metrics_path is not None else None
        self.status, self.stop, self.log, self.cuda = status, stop, log, device.cuda
        self.start_time = self.start_step = None
        self.tokens: int | None = None
        self.tokens_before = 0  # trained on before a resume, from the metrics of the earlier steps
        self.first_line: dict = {"device": device.name, "mode": device.mode}
        self.counter = counter  # core.packing.Counting
        self.metrics_path = metrics_path

    def on_train_begin(self, args, state, control, **kw):
        self.start_time, self.start_step = time.time(), state.global_step
        if state.global_step and self.metrics_path is not None:  # resumed: go on from the count of the last line at or before this step
            from core.runs import read_metrics

            earlier = [m["tokens"] for m in read_metrics(self.metrics_path.parent)
                       if m.get("tokens") is not None and (m.get("step") or 0) <= state.global_step]
            self.tokens_before = earlier[-1] if earlier else 0
        self.status.update(state="running", step=state.global_step, max_steps=state.max_steps)

    def on_substep_end(self, args, state, control, **kw):
        if self.counter is not None:
            self.counter.consumed()  # a micro-batch whose gradients wait for the next update

    def on_step_end(self, args, state, control, **kw):
        if self.counter is not None:
            self.counter.consumed()  # the update's last micro-batch
        if self.stop.agreed() and not control.should_training_stop:
            # Save a checkpoint too, so a stopped run can be resumed where it ended.
            control.should_training_stop = True
            control.should_save = True
            self.status.update(state="stopping")
            self.log.info("stop requested: ending after step %d", state.global_step,
                          extra=zh(f"收到停止请求：第 {state.global_step} 步之后结束"))
        if state.global_step >= state.max_steps or control.should_training_stop:
            # The last step is always on the chart, however short the run (the first is too: logging_first_step).
            control.should_log = True
        self.status.update(step=state.global_step)
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        if "loss" not in logs and "eval_loss" not in logs:
            return  # the end-of-training summary; the last step is already written
        now = time.time()
        elapsed = now - (self.start_time or now)
        done = max(state.global_step - (self.start_step or 0), 0)
        evaluation = "eval_loss" in logs
        session = None  # tokens trained on since this process started
        if not evaluation and self.counter is not None:
            # Real (non-pad) tokens trained on, counted by the collator: trl's own count reads one
            # row's width for packed rows, 16 times too few at 16 rows a pass. Every rank's own.
            session = int(across_ranks(self.counter.tokens))
        elif not evaluation and logs.get("num_tokens") is not None:
            session = int(logs["num_tokens"])
        if session is not None:
            self.tokens = self.tokens_before + session
        line = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "loss": _finite(logs.get("loss")),  # NaN is not JSON: a gap in the chart, the cause in status.json
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": _finite(logs.get("grad_norm")),
            "tokens": self.tokens,
            "tokens_per_second": round(session / elapsed, 1) if session and elapsed > 0 else None,
            "elapsed": round(elapsed, 2),
            "remaining": round(elapsed / done * (state.max_steps - state.global_step), 1) if done else None,
            "gpu_memory_gb": self._gpu_memory(),
            "time": now,
        }
        if evaluation:
            line["eval_loss"] = _finite(logs["eval_loss"])
        line.update({k: v for k, v in self.first_line.items() if k not in line})
        self.first_line = {}
        if self.file is None:
            return
        self.file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.file.flush()
        keys = ("eval_loss",) if evaluation else ("loss", "learning_rate", "tokens_per_second")
        shown = {k: line[k] for k in keys if line.get(k) is not None}
        values = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        chinese = " ".join(f"{NAMES_ZH[k]}={v:.4g}" for k, v in shown.items())
        self.log.info("step %d/%d %s", line["step"], line["max_steps"], values,
                      extra=zh(f"第 {line['step']}/{line['max_steps']} 步 {chinese}"))

    def _gpu_memory(self):
        """The peak GiB of this run's fullest GPU (every rank reads its own; the largest is the one that must fit)."""
        if not self.cuda:
            return None
        import torch

        return round(across_ranks(torch.cuda.max_memory_allocated() / 2**30, "max"), 3)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()



NAN_HINT = Text("lower the learning rate or LoRA alpha, or turn gradient clipping on (max grad norm 1.0)",
                "请调低学习率或 LoRA alpha，或打开梯度裁剪（max grad norm 1.0）")
DIVERGING = 3.0  # the loss of the last few logs against the first logged one


def _finite(value):
    return value if value is None or math.isfinite(value) else None


def _word(value: float) -> str:
    return "NaN" if math.isnan(value) else "inf"


class Guard(TrainerCallback):
    """Ends the run at the step its weights (or loss, or grad norm) stop being finite; warns when the loss climbs.

    A NaN step poisons every later one, and transformers then logs a loss of 0.0: without this
    a broken run ended "finished" with an all-NaN adapter. The cause ends up in `problem`.
    """

    def __init__(self, status: Status, log, fp16: bool):
        self.status, self.log = status, log
        self.fp16 = fp16  # the fp16 grad scaler skips steps with an inf grad norm on purpose
        self.problem: str | None = None  # "the loss became NaN at step 3"
        self.step: int | None = None
        self.losses: list[float] = []
        self.warned = False
        self.params = None

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.problem is None and model is not None and not self._finite_weights(model):
            self._stop(control, Text(f"the LoRA weights became NaN or inf at step {state.global_step}",
                                     f"LoRA 权重在第 {state.global_step} 步变成了 NaN 或 inf"), state.global_step)
            control.should_log = True  # the step's loss and grad norm name the cause (on_log)
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        loss, norm = logs.get("loss"), logs.get("grad_norm")
        cause = None
        if loss is not None and not math.isfinite(loss):
            cause = Text(f"the loss became {_word(loss)} at step {state.global_step}",
                         f"loss 在第 {state.global_step} 步变成了 {_word(loss)}")
        elif norm is not None and not math.isfinite(norm) and not self.fp16:
            cause = Text(f"the grad norm became {_word(norm)} at step {state.global_step}",
                         f"梯度范数在第 {state.global_step} 步变成了 {_word(norm)}")
        if cause and (self.problem is None or self.step == state.global_step):
            self._stop(control, cause, state.global_step)
        elif loss is not None and math.isfinite(loss):
            self._watch_loss(loss, state.global_step)
        return control

    def _stop(self, control, cause: str, step: int) -> None:
        if self.problem is None:  # on_log may only name the cause of the same step better
            self.log.error("%s: stopping the run", cause, extra=zh(f"{getattr(cause, 'zh', cause)}：训练停止"))
        self.problem, self.step = cause, step
        control.should_training_stop = True
        control.should_save = False  # earlier checkpoints stay; this step's weights are not worth keeping
        control.should_evaluate = False

    def _watch_loss(self, loss: float, step: int) -> None:
        self.losses.append(loss)
        recent = self.losses[-3:]
        if self.warned or len(self.losses) < 4 or self.losses[0] <= 0:
            return
        if sum(recent) / len(recent) > DIVERGING * self.losses[0]:
            self.warned = True
            warning = Text(f"the loss rose from {self.losses[0]:.3g} to {loss:.3g} by step {step}: training may be "
                           "diverging; lower the learning rate or LoRA alpha",
                           f"到第 {step} 步，损失从 {self.losses[0]:.3g} 升到了 {loss:.3g}：训练可能在发散；"
                           "请调低学习率或 LoRA alpha")
            self.log.warning(warning)
            self.status.update(warning=warning)

    def _finite_weights(self, model) -> bool:
        import torch

        if self.params is None:
            self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            return True
        with torch.no_grad():  # one flag per tensor, one sync per step: cheap next to the step itself
            return bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all())
