"""Training end to end on CPU: a real run on the embedded model, its run folder, its refusals, stop and resume.

`shared_run()` trains once per test session (identity data, 64 rows, 12 steps) and is reused by
the merge, chat and learning tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from core.config import PrepareConfig, TrainConfig, preset
from core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
PICKLE = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Small but real: enough LoRA capacity and steps for the identity set to be learned on 2 CPU cores.
FAST = dict(batch_size=4, grad_accum=1, logging_steps=1, packing=False, gradient_checkpointing=False,
            lora_r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", learning_rate=1e-3,
            max_seq_length=64, save_steps=0)

_shared: dict[str, Path] = {}


def scratch() -> Path:
    """A folder inside the session's workspace (the conftest points QLORA_STUDIO_HOME at a tmp folder)."""
    return Path(tempfile.mkdtemp(dir=os.environ["QLORA_STUDIO_HOME"]))


def identity_dataset() -> Path:
    """The 64 identity rows (English and Chinese), prepared like any user data (auto: the model's own chat template), no eval split."""
    if "dataset" not in _shared:
        from core.data import prepare

        folder = scratch()
        src = folder / "identity.jsonl"
        src.write_text((ASSETS / "identity.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
        # Every row for training, and no check of what each run learned at its end (tests/test_learning.py has it).
        prepare(PrepareConfig(input=str(src), out=str(folder / "dataset"), sample=0, eval_ratio=0))
        _shared["dataset"] = folder / "dataset"
    return _shared["dataset"]


def shared_run() -> Path:
    """One 12-step run on the identity set, trained in-process once per session."""
    if "run" not in _shared:
        from core.train import train

        run = scratch() / "run"
        result = train(preset("default", data=str(identity_dataset()), out=str(run), max_steps=12, **FAST))
        assert result["state"] == "finished", result
        _shared["run"] = run
    return _shared["run"]


def shared_merge() -> Path:
    """The shared run's adapter merged (float32, so the check is tight on CPU)."""
    if "merged" not in _shared:
        from core.config import MergeConfig
        from core.merge import merge

        out = scratch() / "merged"
        report = merge(MergeConfig(adapter=str(shared_run() / "adapter"), out=str(out), dtype="float32"))
        assert report["ok"], report
        _shared["merged"] = out
    return _shared["merged"]


def core_cli(*args, env=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    """`python -m core ARGS` in a child process, as a user would type it."""
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env or dict(os.environ), **kw)


LEFT = object()  # a module not imported (nor left out) before a command ran in this process


def core_here(*args) -> subprocess.CompletedProcess:
    """`python -m core ARGS` run inside this test process: the same exit code, stdout and stderr, without the 8 to
    11 s a child spends importing the libraries on a 2-core machine. For the many refusals; every command keeps
    tests that type it as a user would (core_cli). What a command does for a process of its own only is undone:
    the libraries it leaves out, and its Ctrl+C handler."""
    import contextlib
    import io
    import signal

    from core.__main__ import main

    modules = {name: sys.modules.get(name, LEFT) for name in ("wandb", "bitsandbytes")}
    handler = signal.getsignal(signal.SIGINT)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        signal.signal(signal.SIGINT, handler)
        for name, module in modules.items():
            if module is not LEFT:
                sys.modules[name] = module
            elif sys.modules.get(name, LEFT) is None:  # left out by the command: importable again
                del sys.modules[name]
    return subprocess.CompletedProcess(["python", "-m", "core", *map(str, args)], code, out.getvalue(), err.getvalue())


def pickles(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in PICKLE)


# ---- the shared run ------------------------------------------------------------------------------
@pytest.mark.slow
def test_loss_falls_and_every_step_is_logged(base_model):
    run = shared_run()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 13))
    losses = [x["loss"] for x in lines]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    first = lines[0]
    assert first["mode"] == "LoRA float32 (no GPU)" and first["device"] == "cpu"
    assert first["gpu_memory_gb"] is None and first["max_steps"] == 12
    assert all(x["tokens"] > 0 and x["learning_rate"] > 0 and x["elapsed"] >= 0 for x in lines)
    assert lines[-1]["tokens"] > lines[0]["tokens"] and lines[-1]["remaining"] == 0


@pytest.mark.slow
def test_the_runs_own_lines_read_in_the_readers_language(base_model):
    """The Train tab's story of a run: its own lines (not library notices), each in Chinese for a Chinese reader and
    in English otherwise; train.log keeps the English for the record."""
    from core import runs

    run = shared_run()
    en, zh = runs.story(run, 100, "en"), runs.story(run, 100, "zh")
    assert "step 12/12 loss=" in en and "base model loaded in" in en and "trainable parameters:" in en
    assert "第 12/12 步 损失=" in zh and "基础模型加载用时" in zh and "可训练参数：" in zh
    assert "在第 12 步完成；适配器已保存到" in zh and "finished at step 12; adapter saved to" in en
    assert "设备 cpu；没有 GPU：用 float32 做普通 LoRA" in zh
    assert len(en.splitlines()) == len(zh.splitlines()) > 10  # line for line
    assert "step 12/12" in (run / "train.log").read_text() and "第 12/12 步" not in (run / "train.log").read_text()
    assert runs.story(run, 3, "zh").count("\n") == 2  # the last lines only


def test_run_folder_holds_what_merge_and_chat_need(base_model):
    run = shared_run()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 12 and status["error"] is None
    assert status["mode"] == "LoRA float32 (no GPU)" and status["ended"] >= status["started"]
    adapter = Path(status["adapter"])
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "tokenizer.json").is_file()
    record = json.loads((adapter / "qlora_studio.json").read_text())
    assert record["base_model"] == "default" and record["template"]["name"] == "chat"
    assert record["config"]["max_steps"] == 12 and record["run"] == str(run)
    assert TrainConfig.load(run / "config.json").lora_r == 16
    # What this CPU made of the settings asked for (config.json keeps those: 4-bit): plain LoRA in float32.
    assert TrainConfig.load(run / "config.json").quantization == "4bit"
    used = json.loads((run / "used.json").read_text())
    assert used["quantization"] == "none" and used["compute_dtype"] == "float32" and used["double_quant"] is False
    # Weights are safetensors everywhere; the adapter holds no pickle at all.
    assert pickles(adapter) == []
    assert not list(run.rglob("training_args.bin")) and not list(run.rglob("*.bin"))
    log = (run / "train.log").read_text()
    assert log.count("no GPU: plain LoRA in float32") == 1 and "finished at step 12" in log


# ---- what the trainer sees -------------------------------------------------------------------
def test_loss_mask_covers_the_replies_only(tokenizer, tmp_path):
    from core.trainer import tokenized

    rows = tmp_path / "train.jsonl"
    rows.write_text(json.dumps({"segments": [["### Human: Hi ### Assistant: ", False], ["Hello!<|im_end|>", True]]}) + "\n")
    row = tokenized(rows, tokenizer, TrainConfig(data="d", out="o", max_seq_length=512))[0]
    trained = [i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
    assert tokenizer.decode(trained) == "Hello!<|im_end|>"
    assert tokenizer.decode(row["input_ids"]).endswith("### Assistant: Hello!<|im_end|>")
    short = tokenized(rows, tokenizer, TrainConfig(data="d", out="o", max_seq_length=10))[0]
    assert len(short["input_ids"]) == 10 and short["completion_mask"][-1] == 1


def test_rows_tokenized_in_batches_equal_a_call_per_segment_and_a_broken_row_is_named(tokenizer, tmp_path, monkeypatch):
    from core import data, trainer

    texts = ["你好，请介绍一下你自己。", "Tell me about the sea.", "", "### Human: 1+1? ### Assistant: ", "2<|im_end|>"]
    rows = tmp_path / "train.jsonl"
    with rows.open("w", encoding="utf-8") as f:
        for n in range(7):
            f.write(json.dumps({"segments": [[texts[n % 5], False], [texts[(n + 1) % 5] + str(n), True]]}) + "\n")
    monkeypatch.setattr(data, "TOKENIZE_BATCH", 3)  # batches of 3, 3 and 1 rows
    got = trainer.tokenized(rows, tokenizer, TrainConfig(data="d", out="o", max_seq_length=512, loss_on="all"))
    bos = [tokenizer.bos_token_id] if trainer.models.leading_bos(tokenizer) is not None else []
    for n, row in enumerate(got):
        prompt = tokenizer(texts[n % 5], add_special_tokens=False)["input_ids"]
        reply = tokenizer(texts[(n + 1) % 5] + str(n), add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == bos + prompt + reply, n
        assert row["completion_mask"] == [0] * (len(bos) + len(prompt)) + [1] * len(reply), n
    assert len(got) == 7
    with rows.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"segments": [["only a text"]]}) + "\n")
    with pytest.raises(UserError, match=r"train.jsonl, line 8: not a prepared row"):
        trainer.tokenized(rows, tokenizer, TrainConfig(data="d", out="o"))


def test_packed_rows_do_not_see_each_other(base_model):
    """Packing puts rows side by side; with the settings training uses, each row's logits stay its own."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model.config.use_cache = False  # as in training
    a, b = torch.tensor([[1, 2, 3, 4, 5, 6]]), torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        alone = model(b).logits
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])).logits
    assert (packed[:, 6:] - alone).abs().max() < 1e-3


# ---- refusals: exit code 2, one line, nothing written ----------------------------------------------
def _refused(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_refuses_a_missing_model_folder(tmp_path):
    data = identity_dataset()
    _refused(core_cli("train", "--data", data, "--out", tmp_path / "run", "--model", tmp_path / "no-such-model"),
             "no-such-model", "not found")
    assert not (tmp_path / "run").exists()


def test_refuses_a_folder_that_is_not_a_prepared_dataset(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n')
    _refused(core_cli("train", "--data", tmp_path / "mine", "--out", tmp_path / "run"),
             "is not a prepared dataset", "python -m core prepare")
    assert not (tmp_path / "run").exists()


def test_refuses_an_existing_run_folder_and_keeps_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter").mkdir()
    (run / "notes.txt").write_text("mine")
    _refused(core_cli("train", "--data", identity_dataset(), "--out", run), "already holds a run")
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "notes.txt"]
    assert (run / "notes.txt").read_text() == "mine"


def test_refuses_unknown_settings(tmp_path):
    _refused(core_cli("train", "--data", identity_dataset(), "--out", tmp_path / "run", "--lora-rank", "8"),
             "--lora-rank")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"data": "x", "out": "y", "lora_rank": 8}))
    _refused(core_cli("train", "--config", cfg), "lora_rank")
    _refused(core_cli("train", "--data", identity_dataset(), "--out", tmp_path / "run", "--batch-size", "0"),
             "batch_size")
    assert not (tmp_path / "run").exists()


# ---- as the panel runs it: a child with its output in train.log, stopped, then resumed --------------
def _start_like_the_supervisor(run: Path, cfg: TrainConfig, env=None) -> subprocess.Popen:
    run.mkdir(parents=True)
    cfg.save(run / "config.json")
    (run / "status.json").write_text(json.dumps({"state": "starting", "pid": None}))
    with open(run / "train.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(run / "config.json"),
                                 "--out", str(run)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=env or dict(os.environ))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while not (path.is_file() and path.read_text().strip()):
        assert proc.poll() is None, "the run ended early"
        assert time.time() < end, f"{path.name} never appeared"
        time.sleep(0.5)


def test_a_stop_while_the_libraries_import_is_a_stop_not_a_failure(tmp_path):
    """Stop pressed in the first second, while torch and transformers are still importing: an import cut in half
    can fail later as another error ("cannot load module more than once"); the run says stopped all the same."""
    cfg = preset("default", data=str(identity_dataset()), max_steps=2, **FAST)
    for delay in (0.3, 1.0):
        run = tmp_path / f"at-{delay}"
        proc = _start_like_the_supervisor(run, cfg.replace(out=str(run)))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
        status = json.loads((run / "status.json").read_text())
        assert status["state"] != "failed", (delay, status, (run / "train.log").read_text()[-1500:])
        if code == 130:  # ended by the interrupt in Python's hands (not killed by it inside a C library)
            assert status["state"] == "stopped", (delay, status)


@pytest.mark.slow
def test_sigint_stops_after_the_step_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    cfg = preset("default", data=str(identity_dataset()), out=str(run), max_steps=500,
                 **{**FAST, "lora_r": 4, "target_modules": "default", "batch_size": 2})
    proc = _start_like_the_supervisor(run, cfg)
    try:
        _wait_for(run / "metrics.jsonl", proc, timeout=240)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 0
    finally:
        proc.kill()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped", status
    stopped_at = status["step"]
    assert 1 <= stopped_at < 500 and status["error"] is None
    assert (Path(status["adapter"]) / "adapter_model.safetensors").is_file()
    log = (run / "train.log").read_text()
    assert log.count("no GPU: plain LoRA in float32") == 1  # stdout is train.log: no line written twice
    assert "stop requested" in log
    # The stop saved a checkpoint to resume from, its trainer state in safetensors: no pickle in the run.
    checkpoint = run / "checkpoints" / f"checkpoint-{stopped_at}"
    for name in ("optimizer", "scheduler", "rng_state", "adapter_model"):
        assert (checkpoint / f"{name}.safetensors").is_file(), name
    assert pickles(run) == []

    resumed = core_cli("train", "--config", run / "config.json", "--out", run, "--resume",
                       "--max-steps", stopped_at + 2, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == stopped_at + 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines[-2:]] == [stopped_at + 1, stopped_at + 2]
    # The token count goes on from where the stopped run left it, instead of starting again at 0.
    before = max(x["tokens"] for x in lines if x["step"] <= stopped_at)
    assert before < lines[-2]["tokens"] < lines[-1]["tokens"], [(x["step"], x["tokens"]) for x in lines]
    assert lines[-1]["tokens_per_second"] < lines[-1]["tokens"] / lines[-1]["elapsed"]
    assert pickles(run) == []


def test_trainer_state_round_trips_without_pickle(tmp_path):
    import random

    import numpy as np
    import torch

    from core.checkpoints import load_state, save_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "python": random.getstate(), "numpy": np.random.get_state()}
    save_state(tmp_path, "state", state)
    back = load_state(tmp_path, "state")
    assert back["python"] == state["python"]
    assert np.array_equal(back["numpy"][1], state["numpy"][1]) and back["numpy"][1].dtype == np.uint32
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert fresh.param_groups[0]["betas"] == (0.9, 0.99)


@pytest.mark.parametrize("report_to, lean", [("tensorboard", True), ("wandb", False)])
def test_a_cpu_run_leaves_out_wandb_and_bitsandbytes_when_it_will_not_use_them(tmp_path, base_model, report_to, lean):
    """trl asks transformers whether wandb is there as it is imported, which imports wandb; peft imports bitsandbytes
    wherever it is installed, and bitsandbytes imports torch's compiler: seconds of every start on a CPU. A
    training process that will not report to wandb, on a machine with no GPU in sight, leaves them out first; a
    model saved in bitsandbytes' 4 bits still needs it. The other case is the control: both imported."""
    import subprocess
    import sys

    stored = tmp_path / "stored-in-4-bits"
    stored.mkdir()
    config = json.loads((Path(base_model) / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (stored / "config.json").write_text(json.dumps(config))
    code = ("import sys; from core import models; from core.tracking import leave_out; leave_out(sys.argv[1]); "
            "said = [models.leave_out_bitsandbytes(sys.argv[2]), 'bitsandbytes' in sys.modules, "
            "sys.argv[4] == 'True' and models.leave_out_bitsandbytes(sys.argv[3])]; "
            "import trl; from trl import SFTTrainer; import peft; "
            "print('left out:', *said, sys.modules.get('wandb') is None, sys.modules.get('bitsandbytes') is None)")
    done = subprocess.run([sys.executable, "-c", code, report_to, str(stored), base_model, str(lean)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stdout.splitlines() if line.startswith("left out:")]
    assert said == [f"left out: False False {lean} {lean} {lean}"], done.stdout[-2000:]


@pytest.mark.parametrize("once", [True, False])
def test_a_command_maps_the_installed_distributions_once(once):
    """trl and transformers each map every installed distribution when imported; a `python -m core` command maps
    them once (seconds in an environment of many packages). The control, without it: twice. Each caller gets its
    own copy of the map."""
    import subprocess
    import sys

    code = ("import sys, importlib.metadata as m; scans = []; scan = m.packages_distributions; "
            "m.packages_distributions = lambda: scans.append(1) or scan(); "
            "from core.__main__ import _scan_once; sys.argv[1] == 'True' and _scan_once(); "
            "import trl, transformers.utils.import_utils as iu; iu._candidate_distribution_names('torch'); "
            "a, b = m.packages_distributions(), m.packages_distributions(); a['x'] = 1; "
            "print('scans:', len(scans), 'x' in b, a.keys() - {'x'} == b.keys())")
    done = subprocess.run([sys.executable, "-c", code, str(once)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stdout.splitlines() if line.startswith("scans:")]
    assert said == [f"scans: {1 if once else 4} False True"], done.stdout[-2000:]


@pytest.mark.slow
def test_wandb_without_key_or_network_logs_offline(tmp_path):
    from core import paths

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["QLORA_STUDIO_CACHE"] = str(paths.cache())  # the converted embedded model, not converted again
    env["HOME"] = str(tmp_path / "home")  # no ~/.netrc: no key anywhere
    run = tmp_path / "run"
    cfg = preset("default", data=str(identity_dataset()), out=str(run), max_steps=1, report_to="wandb",
                 **{**FAST, "lora_r": 4, "target_modules": "default"})
    started = time.time()
    proc = _start_like_the_supervisor(run, cfg, env=env)
    try:
        assert proc.wait(timeout=300) == 0, (run / "train.log").read_text()[-3000:]
    finally:
        proc.kill()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished"
    # Offline mode is chosen before the first step, without waiting for a network.
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first["time"] - started < 120
    assert "wandb: no API key" in (run / "train.log").read_text()
    assert list((run / "wandb").glob("offline-run-*"))
    assert "WANDB_API_KEY" not in (run / "config.json").read_text()


@pytest.mark.slow
def test_eval_split_and_tensorboard(tmp_path):
    from core.data import prepare
    from core.train import train

    src = tmp_path / "identity.jsonl"
    src.write_text("".join((ASSETS / "identity.jsonl").read_text(encoding="utf-8").splitlines(True)[:40]), encoding="utf-8")
    data = tmp_path / "dataset"
    prepare(PrepareConfig(input=str(src), out=str(data), sample=0, eval_ratio=0.2))
    run = tmp_path / "run"
    result = train(preset("tutorial", data=str(data), out=str(run), max_steps=2, eval_steps=1,
                          report_to="tensorboard", **{**FAST, "lora_r": 4, "target_modules": "default"}))
    assert result["state"] == "finished"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval_loss" in x]
    assert [x["step"] for x in evals] == [1, 2] and all(x["eval_loss"] > 0 and x["loss"] is None for x in evals)
    assert [x["tokens"] for x in lines] == sorted(x["tokens"] for x in lines)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert TrainConfig.load(run / "config.json").loss_on == "all"  # the tutorial recipe: loss on the whole text


def test_a_damaged_dataset_fails_the_run_with_the_line_named(tmp_path):
    data = tmp_path / "dataset"
    shutil.copytree(identity_dataset(), data)
    rows = (data / "train.jsonl").read_text().splitlines()
    rows[6] = '{"text": "no segments here"}'
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    result = core_here("train", "--data", data, "--out", run, "--max-steps", "1")
    _refused(result, "train.jsonl, line 7", "prepare the data again")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "line 7" in status["error"] and status["adapter"] is None
    assert "line 7" in (run / "train.log").read_text()


@pytest.mark.slow
def test_tokens_per_second_counts_every_packed_row(tmp_path):
    from core.train import train

    run = tmp_path / "packed"
    result = train(preset("default", data=str(identity_dataset()), out=str(run), max_steps=2,
                          **{**FAST, "packing": True, "batch_size": 2, "max_seq_length": 64}))
    assert result["state"] == "finished"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # Two steps of two packed rows of up to 64 tokens: far more than one row's width a step, and
    # only the batches trained on (the data loader's next batch is not counted yet).
    assert 64 < lines[0]["tokens"] <= 2 * 64 < lines[-1]["tokens"] <= 2 * 2 * 64, lines


def test_a_run_shorter_than_logging_steps_still_shows_its_first_and_last_step(tmp_path):
    from core.train import train

    run = tmp_path / "short"
    result = train(preset("default", data=str(identity_dataset()), out=str(run), max_steps=3,
                          **{**FAST, "logging_steps": 10}))
    assert result["state"] == "finished"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 3], lines
    assert lines[0]["tokens_per_second"] > 0 and lines[0]["remaining"] is not None and lines[-1]["loss"] > 0


def test_a_finished_run_leaves_its_model_to_nobody(tmp_path):
    """train() in a process that goes on (a test, a script) hands its model's memory back on return: the model and
    its trainer hold each other, and on a GPU the 13B's 10 GB stayed taken until the collector happened to run, so a
    chat loaded next in that process chose 4-bit where 8-bit fitted (H200)."""
    import gc

    import torch

    from core.train import train

    def models() -> int:
        return sum(issubclass(type(o), torch.nn.Module) and type(o).__name__.endswith("ForCausalLM") for o in gc.get_objects())

    gc.collect()
    before = models()
    gc.disable()  # only train() itself may collect
    try:
        result = train(preset("default", data=str(identity_dataset()), out=str(tmp_path / "run"), max_steps=1, **FAST))
        after = models()
    finally:
        gc.enable()
    assert result["state"] == "finished", result
    assert after == before, (before, after)
