"""Machines with several GPUs: a run on one GPU works from the command line and from the panel.

Skipped with fewer than two CUDA GPUs (see conftest); run on the two-GPU machine with `pytest -m multigpu`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from test_gpu import any_tokenizer, model_13b, small_random_model  # noqa: F401 - fixtures
from test_train import ROOT, scratch

pytestmark = pytest.mark.multigpu

TINY = ["--max-steps", "3", "--logging-steps", "1", "--save-steps", "0", "--max-seq-length", "128", "--batch-size", "4"]


def _child_env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("CUDA_VISIBLE_DEVICES", None)  # the machine's GPUs, all of them, as a new user has them
    return env


def test_command_line_run_trains_on_one_of_several_gpus(small_random_model):  # noqa: F811
    model, data = small_random_model
    run = scratch() / "cli"
    done = subprocess.run([sys.executable, "-m", "core", "train", "--model", model, "--data", data, "--out", str(run),
                           *TINY], cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["device"].startswith("cuda:0"), status
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_panel_job_sees_one_gpu_and_the_monitor_sees_all(small_random_model, monkeypatch):  # noqa: F811
    from core import jobs, monitor, status
    from core.config import preset

    model, data = small_random_model
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    job = jobs.JobManager().start_train(preset("default", model=model, data=data, out=str(scratch() / "panel"),
                                               max_steps=3, logging_steps=1, save_steps=0, max_seq_length=128,
                                               batch_size=4))
    end = time.time() + 600
    while job.alive() and time.time() < end:
        time.sleep(1)
    status = status.read(job.folder)
    assert status["state"] == "finished", (status, job.log_tail(30))
    assert len(monitor.snapshot()["gpus"]) >= 2


def test_two_gpus_train_together_stop_saves_and_resume_continues(small_random_model):  # noqa: F811
    from test_parallel import run_stop_resume

    from core.config import preset

    model, data = small_random_model
    cfg = preset("default", model=model, data=data, out=str(scratch() / "two"), gpus="0,1", max_steps=10,
                 logging_steps=1, save_steps=1, max_seq_length=128, batch_size=4)
    run = run_stop_resume(cfg)
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["device"].startswith("cuda:0")


def test_two_launchers_as_two_nodes_train_one_run(small_random_model):  # noqa: F811
    # The launcher's multi-node options on one host: node 0 and node 1, one GPU each.
    model, data = small_random_model
    run = scratch() / "nodes"
    port = "29517"
    procs = []
    for node in (0, 1):
        env = {**_child_env(), "CUDA_VISIBLE_DEVICES": str(node), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
             "--master-addr=127.0.0.1", f"--master-port={port}", "--nproc-per-node=1",
             "-m", "core", "train", "--model", model, "--data", data, "--out", str(run), *TINY],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 3, status
    assert "2 processes train together" in (run / "train.log").read_text()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_chat_spreads_a_13b_in_16_bits_over_two_gpus_too_small_for_it_alone(model_13b):  # noqa: F811
    """Two cards capped at 20 GiB each: 16-bit (about 29 GiB) fits neither alone, both together; the model answers."""
    env = {**_child_env(), "CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "budget.py"), "20", "-m", "core", "chat", "--model",
                           model_13b, "--prompt", "你好", "--gpus", "0,1", "--precision", "16bit", "--temperature", "0",
                           "--max-new-tokens", "8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "16bit as chosen" in done.stderr and "spread over GPUs 0, 1" in done.stderr, done.stderr[-2000:]


CHAT_ON_GPU_1 = """
import sys, torch
from core.chat import Chat
chat = Chat()
chat.load(sys.argv[1], gpus=[1])
places = {str(p.device) for p in chat.model.parameters()}
reply = chat.reply([], "Hello", None)
print("places", sorted(places), "on GPU 0", torch.cuda.memory_allocated(0), "fallback", repr(chat.fallback), "reply",
      repr(reply[:20]), flush=True)
chat.close()
"""


def test_chat_loads_whole_on_the_second_gpu_when_asked(small_random_model):  # noqa: F811
    """The Chat tab's pick of one GPU: the model, its warm-up and its replies on GPU 1, nothing on GPU 0."""
    model, _ = small_random_model
    env = {**_child_env(), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    done = subprocess.run([sys.executable, "-c", CHAT_ON_GPU_1, model], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "places ['cuda:1'] on GPU 0 0 fallback ''" in done.stdout, done.stdout + done.stderr[-2000:]
