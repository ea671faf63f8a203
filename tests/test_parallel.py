"""Data-parallel training: the launcher, the ranks, Stop and Resume.

On a machine without GPUs the same code runs as two CPU processes (gloo), so the launcher and
the ranks' agreement are tested everywhere; tests/test_multigpu.py runs it on two GPUs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_train import FAST, identity_dataset, scratch

from core import gpus, jobs, runs, saving, status
from core.config import preset
from core.plan import share

pytestmark = pytest.mark.slow


def test_the_processes_share_each_update():
    assert share(16, 1, 1) == (16, 1, 1.0)
    assert share(4, 4, 2) == (4, 2, 1.0)  # the accumulation is split first: the same rows a pass
    assert share(16, 1, 2) == (8, 1, 1.0)  # then the batch
    batch, accum, factor = share(3, 1, 2)  # neither divides: 4 rows an update instead of 3
    assert (batch, accum) == (2, 1) and factor == pytest.approx((4 / 3) ** 0.5)


def test_the_launcher_runs_one_process_per_gpu():
    base = ["/usr/bin/python3", "-m", "core"]
    assert gpus.command(base, ["train"], 1) == [*base, "train"]
    cmd = gpus.command(base, ["train", "--out", "R"], 2)
    assert cmd[:3] == ["/usr/bin/python3", "-m", gpus.LAUNCHER] and "--nproc-per-node=2" in cmd
    assert cmd[-5:] == ["-m", "core", "train", "--out", "R"]
    env = gpus.narrow({}, ["1", "0"])
    assert env["CUDA_VISIBLE_DEVICES"] == "1,0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    with pytest.raises(ValueError, match="names a GPU twice"):
        gpus.parse("0,0")


def wait(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run_stop_resume(cfg, timeout=600) -> Path:
    """Start a data-parallel run, stop it after its first step, resume it to the end; checks on the way."""
    manager = jobs.JobManager()
    job = manager.start_train(cfg)
    assert gpus.LAUNCHER in job.argv
    run = Path(job.folder)
    wait(lambda: status.read(run)["step"] >= 1 or not job.alive(), timeout, "the first step")
    manager.stop(job, grace=timeout)
    wait(lambda: not job.alive(), timeout, "the stop")
    stopped = status.read(run)
    assert stopped["state"] == "stopped", (stopped, job.log_tail(30))
    checkpoint, _ = saving.newest_checkpoint(run)
    assert checkpoint is not None and saving.step_of(checkpoint) == stopped["step"] < cfg.max_steps
    assert {p.name for p in checkpoint.glob("rng_state*")} == {"rng_state_0.safetensors", "rng_state_1.safetensors"}
    assert (run / "adapter" / "adapter_model.safetensors").is_file()

    resumed = manager.resume(run)
    wait(lambda: not resumed.alive(), timeout, "the resumed run")
    done = status.read(run)
    assert done["state"] == "finished" and done["step"] == cfg.max_steps, (done, resumed.log_tail(30))
    # Rank 0 alone writes the metrics: one line a step, none doubled by the resume.
    assert [m["step"] for m in runs.read_metrics(run) if "loss" in m] == list(range(1, cfg.max_steps + 1))
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "2 processes train together" in log
    assert json.loads((run / "config.json").read_text())["batch_size"] == cfg.batch_size  # the user's settings
    return run


def test_two_processes_train_stop_at_one_step_and_resume(monkeypatch):
    monkeypatch.setenv(gpus.CPU_PROCESSES_ENV, "2")
    cfg = preset("default", data=str(identity_dataset()), out=str(scratch() / "ddp"), max_steps=4,
                 **{**FAST, "lora_r": 4, "save_steps": 1, "batch_size": 4})
    run = run_stop_resume(cfg)
    tokens = [m["tokens"] for m in runs.read_metrics(run) if m.get("tokens")]
    assert tokens == sorted(tokens) and tokens[0] > 0  # counted over both processes, growing
