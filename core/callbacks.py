"""What a training run tells the outside world while it runs: status.json, metrics.jsonl, stop requests.

The panel's supervisor reads `status.json` (rewritten atomically) and follows
`metrics.jsonl` (one JSON object per logging step, flushed at once); a SIGINT or
SIGTERM asks the run to end after the current step.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from transformers import TrainerCallback


class Status:
    """The run's status.json: every change is written to a temporary file and renamed into place."""

    def __init__(self, path: Path, **fields):
        self.path = Path(path)
        self.data = {
            "state": "starting", "pid": os.getpid(), "started": time.time(), "ended": None, "step": 0,
            "max_steps": 0, "device": None, "mode": None, "error": None, "hint": None, "adapter": None,
        }
        self.update(**fields)

    def update(self, **changes) -> None:
        """Merge `changes` into the status and write it so a reader never sees half a file."""
        self.data.update(changes)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


class StopFlag:
    """Turns SIGINT/SIGTERM into a polite request: the run ends after the current step."""

    def __init__(self):
        self.event = threading.Event()
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
        return self.event.is_set()


class Progress(TrainerCallback):
    """Writes metrics.jsonl and keeps status.json's step current; honours a stop request."""

    def __init__(self, metrics_path: Path, status: Status, stop: StopFlag, log, cuda: bool):
        self.file = open(metrics_path, "a", encoding="utf-8")
        self.status, self.stop, self.log, self.cuda = status, stop, log, cuda
        self.start_time = self.start_step = None
        self.tokens: int | None = None
        self.tokens_before = 0  # trained on before a resume, from the metrics of the earlier steps
        self.first_line: dict = {}
        self.counter = None  # core.packing.Counting, set by the trainer's owner
        self.metrics_path = metrics_path

    def on_train_begin(self, args, state, control, **kw):
        self.start_time, self.start_step = time.time(), state.global_step
        if state.global_step:  # resumed: go on from the count of the last line at or before this step
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
        if self.stop.requested and not control.should_training_stop:
            # Save a checkpoint too, so a stopped run can be resumed where it ended.
            control.should_training_stop = True
            control.should_save = True
            self.status.update(state="stopping")
            self.log.info("stop requested: ending after step %d", state.global_step)
        self.status.update(step=state.global_step)
        return control

    def on_save(self, args, state, control, **kw):
        # The pickled copy of the arguments is never read back on resume (config.json holds the settings);
        # dropping it leaves only the optimizer, scheduler and RNG state, which are loaded with weights_only.
        (Path(args.output_dir) / f"checkpoint-{state.global_step}" / "training_args.bin").unlink(missing_ok=True)

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
            # row's width for packed rows, 16 times too few at 16 rows a pass.
            session = self.counter.tokens
        elif not evaluation and logs.get("num_tokens") is not None:
            session = int(logs["num_tokens"])
        if session is not None:
            self.tokens = self.tokens_before + session
        line = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "loss": logs.get("loss"),
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": self.tokens,
            "tokens_per_second": round(session / elapsed, 1) if session and elapsed > 0 else None,
            "elapsed": round(elapsed, 2),
            "remaining": round(elapsed / done * (state.max_steps - state.global_step), 1) if done else None,
            "gpu_memory_gb": self._gpu_memory(),
            "time": now,
        }
        if evaluation:
            line["eval_loss"] = logs["eval_loss"]
        line.update({k: v for k, v in self.first_line.items() if k not in line})
        self.first_line = {}
        self.file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.file.flush()
        keys = ("eval_loss",) if evaluation else ("loss", "learning_rate", "tokens_per_second")
        shown = {k: line[k] for k in keys if line.get(k) is not None}
        self.log.info("step %d/%d %s", line["step"], line["max_steps"],
                      " ".join(f"{k}={v:.4g}" for k, v in shown.items()))

    def _gpu_memory(self):
        if not self.cuda:
            return None
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**30, 3)

    def close(self) -> None:
        self.file.close()

