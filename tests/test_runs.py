"""Reading run folders: tolerant metrics, vanished processes, the runs list."""

from __future__ import annotations

import json

from core import runs, status
from core.config import TrainConfig


def make_run(root, name, status, metrics="", **cfg):
    run = root / "runs" / name
    run.mkdir(parents=True)
    TrainConfig(data="/x/datasets/belle-64", out=str(run), **cfg).save(run / "config.json")
    (run / "status.json").write_text(json.dumps(status))
    (run / "metrics.jsonl").write_text(metrics)
    return run


def test_partly_written_last_metrics_line_is_skipped(tmp_path):
    run = make_run(tmp_path, "a", {"state": "running"},
                   '{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.1}\n{"step": 3, "lo')
    assert [m["step"] for m in runs.read_metrics(run)] == [1, 2]


def test_a_run_whose_process_vanished_reads_as_failed(tmp_path):
    run = make_run(tmp_path, "a", {"state": "running", "pid": 2**22 + 12345})
    seen = status.read(run)
    assert seen["state"] == "failed" and "without saying why" in seen["error"] and "Resume" in seen["hint"]


def test_list_runs_newest_first_with_settings_and_final_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    make_run(tmp_path, "old", {"state": "finished", "started": 100}, '{"step": 10, "loss": 1.25}\n', lora_r=8)
    make_run(tmp_path, "new", {"state": "failed", "started": 200, "error": "out of memory"}, "", preset="tutorial")
    listed = runs.list_runs()
    assert [r["name"] for r in listed] == ["new", "old"]
    assert listed[1]["final_loss"] == 1.25 and listed[1]["r"] == 8 and listed[1]["data"] == "belle-64"
    assert listed[0]["final_loss"] is None and listed[0]["error"] == "out of memory"


def test_log_tail_keeps_last_drawing_of_progress_bars(tmp_path):
    (tmp_path / "train.log").write_text("start\n 10%|#\r 50%|#####\r100%|##########\ndone\n")
    assert runs.log_tail(tmp_path, 2) == "100%|##########\ndone"


def test_log_tail_keeps_one_line_per_progress_bar_without_a_terminal(tmp_path):
    (tmp_path / "train.log").write_text("Loading weights:  10%|#  | 1/10\nLoading weights: 100%|###| 10/10\nready\n")
    assert runs.log_tail(tmp_path, 5) == "Loading weights: 100%|###| 10/10\nready"


def test_the_panel_shows_the_runs_own_lines_only(tmp_path):
    run = make_run(tmp_path, "logged", {"state": "finished", "pid": None})
    (run / "train.log").write_text(
        "2026-11-30 12:01:02 INFO base model loaded in 1.2 s\n"
        "Building labels for train dataset: 100%|██████████| 60/60 [00:00<00:00]\n"
        "/site-packages/x.py:3: UserWarning: something a library says\n"
        "2026-11-30 12:01:07 INFO step 3/3 loss=1.2\n"
        "2026-11-30 12:01:08 WARNING the loss rose\n"
        '{"state": "finished", "step": 3}\n', encoding="utf-8")
    assert runs.story(run) == "12:01:02 base model loaded in 1.2 s\n12:01:07 step 3/3 loss=1.2\n12:01:08 WARNING: the loss rose"


def test_a_run_records_the_settings_the_machine_made_of_its_config():
    """On a CPU, 4-bit loading, fp16, Liger and offloading do not apply: used() says what the run applies instead,
    and a GPU run keeps what it asked for (its auto number format resolved)."""
    import torch

    from core.config import preset
    from core.trainer import Device, used

    tutorial = preset("tutorial", fp8_base="all")
    cpu = used(tutorial, Device("cpu", "LoRA float32 (no GPU)", "", False, torch.float32))
    assert cpu == {"quantization": "none", "double_quant": False, "compute_dtype": "float32", "liger_kernels": False,
                   "fp8_base": "off", "offload_activations": False}
    gpu = used(preset("default"), Device("cuda:0 NVIDIA H200", "4-bit NF4 (bf16 compute)", "", True, torch.bfloat16))
    assert gpu["quantization"] == "4bit" and gpu["double_quant"] is True and gpu["compute_dtype"] == "bfloat16"
    assert gpu["offload_activations"] is True and gpu["fp8_base"] == "off"


def test_the_settings_a_run_used_are_its_config_with_what_the_machine_changed(tmp_path):
    run = make_run(tmp_path, "a", {"state": "finished"}, quantization="4bit", compute_dtype="float16", lora_r=8)
    assert runs.settings_used(run)["quantization"] == "4bit"  # nothing recorded (an older run): as asked for
    status.write_json(run / runs.USED, {"quantization": "none", "compute_dtype": "float32"})
    used = runs.settings_used(run)
    assert used["quantization"] == "none" and used["compute_dtype"] == "float32" and used["lora_r"] == 8


def test_a_resume_from_a_terminal_starts_its_clock_from_the_time_the_run_trained(tmp_path):
    """The status a resumed run starts from carries the time its earlier sessions took (two of them here), also of
    a session whose process vanished without writing its end (counted to its last status write)."""
    import os
    import time

    from core import saving

    run = make_run(tmp_path, "a", {"state": "stopped", "started": 100.0, "ended": 400.0, "elapsed_before": 50.0,
                                   "step": 3})
    checkpoint = run / "checkpoints" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3, "max_steps": 10}))
    assert saving.progress_so_far(run, checkpoint)["elapsed_before"] == 350.0
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 12345, "started": 100.0}))
    os.utime(run / "status.json", (160.0, 160.0))
    assert saving.progress_so_far(run, checkpoint)["elapsed_before"] == 60.0
    assert status.spent(make_run(tmp_path, "fresh", {"state": "starting", "started": time.time()})) == 0


def test_a_cpu_run_from_before_used_json_shows_what_a_cpu_trains_with(tmp_path):
    """The walk-through's tutorial run on a CPU predates used.json: its status.json says it ran on the CPU, which
    trains every run without 4-bit loading, in float32; a GPU run of that time shows its config as asked for."""
    cpu = make_run(tmp_path, "cpu", {"state": "finished", "device": "cpu", "mode": "LoRA float32 (no GPU)"},
                   preset="tutorial", compute_dtype="float16")
    used = runs.settings_used(cpu)
    assert (used["quantization"], used["compute_dtype"], used["double_quant"]) == ("none", "float32", False)
    gpu = make_run(tmp_path, "gpu", {"state": "finished", "device": "cuda:0 NVIDIA H200"}, compute_dtype="float16")
    assert runs.settings_used(gpu)["quantization"] == "4bit" and runs.settings_used(gpu)["compute_dtype"] == "float16"
