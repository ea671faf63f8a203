"""A run survives what goes wrong around it: kills mid-save, a full disk, NaN, a second trainer.

Tiny real runs on CPU (plain LoRA r 8 on q/v, 96 tokens, a checkpoint every step), trained
in-process unless the point is a second process.
"""

from __future__ import annotations

import errno
import json
import re
import resource
import shutil
import signal
import time

import pytest
from test_train import (
    PICKLE,
    _refused,
    _start_like_the_supervisor,
    core_cli,
    identity_dataset,
)

from core import runs, saving
from core.config import preset
from core.errors import UserError

TINY = {"quantization": "none", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "default",
        "max_seq_length": 96, "batch_size": 2, "grad_accum": 1, "logging_steps": 1, "packing": False,
        "gradient_checkpointing": False, "save_steps": 1, "max_steps": 2}
RESUME = "press Resume: the last checkpoint is kept"


def tiny(run, **settings):
    return preset("default", **{"data": str(identity_dataset()), "out": str(run), **TINY, **settings})


def train(cfg):
    from core.train import train as run_training

    return run_training(cfg)


def status_of(run) -> dict:
    return json.loads((run / "status.json").read_text())


def checkpoints(run) -> list[str]:
    """Every folder in RUN/checkpoints, hidden ones included: a half-written one must not be there."""
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


def strict_metrics(run) -> list[dict]:
    """metrics.jsonl as a strict JSON reader (a browser) sees it: NaN is not allowed."""
    def refuse(word):
        raise ValueError(f"{word} in metrics.jsonl")
    return [json.loads(x, parse_constant=refuse) for x in (run / "metrics.jsonl").read_text().splitlines()]


# ---- 4 and 13: a checkpoint counts only when whole; resume falls back; metrics stay single --------
@pytest.mark.slow
def test_resume_skips_a_half_written_checkpoint_and_logs_each_step_once(tmp_path):
    run = tmp_path / "run"
    assert train(tiny(run, max_steps=3))["state"] == "finished"
    # What a SIGKILL right after checkpoint-3's trainer_state.json appeared used to leave behind.
    (run / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text("")

    result = train(tiny(run, max_steps=4, resume=True))
    assert result["state"] == "finished" and result["step"] == 4, result
    assert result["resumed_from"] == "checkpoint-2"
    assert "checkpoint-3 was skipped (trainer_state.json is empty or damaged)" in result["warning"]
    assert result["warning_zh"].startswith("跳过了 checkpoint-3（") and "从 checkpoint-2 继续训练" in result["warning_zh"]
    log = (run / "train.log").read_text()
    assert "skipped checkpoint-3: trainer_state.json is empty or damaged" in log
    assert "resuming from checkpoint-2" in log
    # Steps 3 and 4 were trained after the resume; the first run's step 3 is not shown twice.
    assert [m["step"] for m in strict_metrics(run)] == [1, 2, 3, 4]
    assert checkpoints(run) == ["checkpoint-3", "checkpoint-4"]
    assert all(saving.problem(run / "checkpoints" / c) is None for c in checkpoints(run))


@pytest.mark.slow
def test_a_checkpoint_cut_short_by_a_full_disk_never_appears(tmp_path, monkeypatch):
    from transformers import TrainerState

    save = TrainerState.save_to_json

    def full_at_step_2(self, path):
        if self.global_step == 2:  # the last file of checkpoint-2
            raise OSError(errno.ENOSPC, "No space left on device", path)
        save(self, path)

    monkeypatch.setattr(TrainerState, "save_to_json", full_at_step_2)
    run = tmp_path / "run"
    with pytest.raises(UserError, match="disk full while saving checkpoint-2"):
        train(tiny(run, max_steps=3))
    status = status_of(run)
    assert status["state"] == "failed" and status["error"].startswith("disk full while saving checkpoint-2")
    assert RESUME in status["hint"]
    assert checkpoints(run) == ["checkpoint-1"]  # no checkpoint-2 with an adapter but no trainer state
    assert not (run / "adapter").exists()


def test_damaged_checkpoint_files_are_named(tmp_path):
    good = tmp_path / "checkpoint-1"
    good.mkdir()
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.ones((4, 4), dtype=np.float32)}, str(good / "adapter_model.safetensors"))
    (good / "adapter_config.json").write_text("{}")
    (good / "trainer_state.json").write_text('{"global_step": 1}')
    assert saving.problem(good) is None
    cut = tmp_path / "checkpoint-2"
    shutil.copytree(good, cut)
    data = (cut / "adapter_model.safetensors").read_bytes()
    (cut / "adapter_model.safetensors").write_bytes(data[:-10])
    assert saving.problem(cut) == "adapter_model.safetensors is cut short"
    (cut / "adapter_model.safetensors").write_bytes(b"")
    assert saving.problem(cut) == "adapter_model.safetensors is empty"


# ---- 5: a failed final save keeps the checkpoint and offers no adapter ------------------------------
@pytest.mark.slow
def test_a_full_disk_at_the_final_save_keeps_the_checkpoint_and_offers_no_adapter(tmp_path, monkeypatch):
    from core import models
    from core.callbacks import Status

    def full(folder, record):  # the weights and the tokenizer are written; the disk fills on the last file
        raise OSError(errno.ENOSPC, "No space left on device")

    update, refused = Status.update, []

    def status_disk_full_once(self, **changes):  # writing status.json "failed" fails too, once
        if changes.get("state") == "failed" and not refused:
            refused.append(changes)
            raise OSError(errno.ENOSPC, "No space left on device")
        update(self, **changes)

    monkeypatch.setattr(models, "write_record", full)
    monkeypatch.setattr(Status, "update", status_disk_full_once)
    run = tmp_path / "run"
    # The run's own error comes out, not the failed status write.
    with pytest.raises(UserError, match="disk full while saving the adapter"):
        train(tiny(run))
    status = status_of(run)
    assert status["state"] == "failed" and refused, status
    assert status["error"].startswith(f"disk full while saving the adapter to {run / 'adapter'}")
    assert RESUME in status["hint"] and status["adapter"] is None
    # Merge and Chat are offered nothing; the checkpoint to resume from is whole.
    assert not (run / "adapter").exists() and not (run / ".adapter.tmp").exists()
    assert runs.summary(run)["adapter"] is None
    assert checkpoints(run) == ["checkpoint-1", "checkpoint-2"]
    assert saving.problem(run / "checkpoints" / "checkpoint-2") is None
    assert "could not write status.json (attempt 1 of 2)" in (run / "train.log").read_text()


@pytest.mark.slow
def test_too_little_disk_space_is_refused_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setattr(saving, "free_bytes", lambda folder: 5 * 2**20)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=rf"disk full: about \d+ MiB needed in {run}, 5 MiB free"):
        train(tiny(run))
    status = status_of(run)
    assert status["state"] == "failed" and status["error"].startswith("disk full: about")
    assert "free some disk space" in status["hint"] and status["step"] == 0
    assert (run / "metrics.jsonl").read_text() == ""


def _file_size_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))


@pytest.mark.slow
def test_a_real_write_failure_ends_the_run_failed_with_no_adapter(tmp_path):
    # The adapter's weights (1.8 MB) are the first file over a 1 MiB file size limit.
    run = tmp_path / "run"
    result = core_cli("train", "--data", identity_dataset(), "--out", run, "--quantization", "none",
                      "--lora-r", "8", "--target-modules", "default", "--max-seq-length", "96", "--batch-size", "2",
                      "--no-packing", "--no-gradient-checkpointing", "--save-steps", "0",
                      "--max-steps", "1", preexec_fn=_file_size_limit)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]  # after the datasets library's progress bars
    assert last.startswith(f"error: disk full while saving the adapter to {run / 'adapter'} (file too large)"), last
    status = status_of(run)
    assert status["state"] == "failed" and status["step"] == 1
    assert "start the run again" in status["hint"]  # save_steps 0: no checkpoint to resume from
    assert not (run / "adapter").exists() and not (run / ".adapter.tmp").exists()


# ---- 6: NaN ends the run ---------------------------------------------------------------------
@pytest.mark.slow
def test_nan_ends_the_run_failed_and_keeps_only_earlier_checkpoints(tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"became (NaN|inf) at step \d+"):
        train(tiny(run, learning_rate=0.99, lora_alpha=1e8, max_grad_norm=0, max_steps=8))
    from core.callbacks import NAN_HINT

    status = status_of(run)
    bad = int(re.search(r"at step (\d+)", status["error"]).group(1))
    assert status["state"] == "failed" and status["hint"] == NAN_HINT and status["step"] == bad < 8
    assert not (run / "adapter").exists()
    kept = checkpoints(run)
    assert kept and all(int(c.split("-")[1]) < bad for c in kept)
    for c in kept:
        weights = load_file(str(run / "checkpoints" / c / "adapter_model.safetensors"))
        assert all(bool(w.isfinite().all()) for w in weights.values()), c
    assert strict_metrics(run)[-1]["step"] == bad


def test_a_climbing_loss_is_warned_about(tmp_path):
    import logging

    from transformers import TrainerControl, TrainerState

    from core.callbacks import Guard
    from core.status import Status

    def feed(losses):
        status = Status(tmp_path)
        guard = Guard(status, logging.getLogger("test"), fp16=False)
        state, control = TrainerState(), TrainerControl()
        for step, loss in enumerate(losses, 1):
            state.global_step = step
            guard.on_log(None, state, control, logs={"loss": loss, "grad_norm": 1.0})
        assert not control.should_training_stop
        return status_of(tmp_path)["warning"]

    assert feed([2.0, 1.8, 1.7, 1.6, 1.5, 1.4]) is None
    warning = feed([2.0, 2.5, 5.0, 7.0, 8.0])
    assert "the loss rose from 2 to 8 by step 5" in warning and "lower the learning rate" in warning


# ---- 7: one trainer per run -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_trainer_of_the_same_run_is_refused(tmp_path):
    run = tmp_path / "run"
    first = _start_like_the_supervisor(run, tiny(run, max_steps=500))
    try:
        end = time.time() + 240
        while not (run / "checkpoints" / "checkpoint-1").is_dir():
            assert first.poll() is None and time.time() < end, (run / "train.log").read_text()[-2000:]
            time.sleep(0.5)
        assert runs.locked(run)
        second = core_cli("train", "--config", run / "config.json", "--out", run, "--resume")
        _refused(second, f"run {run} is being trained by another process (pid {first.pid})", "wait for it")
        status = status_of(run)
        assert status["pid"] == first.pid and status["state"] == "running"
        assert first.poll() is None
    finally:
        first.kill()  # SIGKILL: the lock must die with the process
        first.wait(timeout=60)
    assert not runs.locked(run)
    assert not runs.locked(tmp_path / "never-trained")


# ---- 8: no pickle, not even for a moment ------------------------------------------------------------
def _looks_pickled(path) -> bool:
    if path.suffix in PICKLE:
        return True
    head = path.read_bytes()[:4]
    # torch.save writes a zip; a bare pickle starts with PROTO (0x80) and a protocol number.
    return head.startswith(b"PK\x03\x04") or (path.suffix != ".safetensors" and head[:1] == b"\x80" and head[1:2] < b"\x06")


@pytest.mark.slow
def test_no_pickle_is_ever_written_into_a_run(tmp_path, monkeypatch):
    import torch

    saved, real = [], torch.save

    def watched(obj, f, *args, **kw):
        saved.append(str(f))
        return real(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", watched)
    run = tmp_path / "run"
    assert train(tiny(run))["state"] == "finished"
    assert [f for f in saved if f.startswith(str(run))] == []
    assert [str(p) for p in run.rglob("*") if p.is_file() and _looks_pickled(p)] == []


# ---- 13: a resume that fails early keeps where the run was --------------------------------------
@pytest.mark.slow
def test_a_resume_that_fails_before_the_first_step_keeps_the_step(tmp_path):
    run = tmp_path / "run"
    assert train(tiny(run))["state"] == "finished"
    data = tmp_path / "dataset"
    shutil.copytree(identity_dataset(), data)
    rows = (data / "train.jsonl").read_text().splitlines()
    rows[6] = '{"text": "no segments here"}'
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match="line 7"):
        train(tiny(run, data=str(data), max_steps=4, resume=True))
    status = status_of(run)
    assert status["state"] == "failed" and "line 7" in status["error"]
    assert (status["step"], status["max_steps"]) == (2, 2)
    assert status["adapter"] == str(run / "adapter")
