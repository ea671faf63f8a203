"""The Train tab's progress panel, rendered from a run folder alone."""

import json

import pytest

from ui.live import progress_html


def test_progress_says_what_the_engine_chose_and_why_a_run_failed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"max_steps": 10}))
    (run / "status.json").write_text(json.dumps({
        "state": "failed", "step": 4, "max_steps": 10, "started": 1.0, "ended": 61.0,
        "device": "cuda:0 NVIDIA H100 80GB HBM3", "mode": "4-bit NF4 (bf16 compute)",
        "error": "out of GPU memory", "hint": "lower batch size or max sequence length"}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 1.5, "tokens_per_second": 812.0}) + "\n")
    html = progress_html(str(run))
    assert "step 4 / 10" in html and "812 tokens/s" in html and "loss 1.5000" in html
    assert "4-bit NF4 (bf16 compute) · NVIDIA H100 80GB HBM3" in html
    assert "out of GPU memory" in html and "lower batch size" in html


def test_a_running_runs_warning_is_shown_above_its_progress(tmp_path):
    """The divergence warning training writes into status.json reaches the page, not only the log."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({
        "state": "running", "step": 6, "max_steps": 10, "started": 1.0,
        "warning": "the loss rose from 2.1 to 9.7 by step 6: training may be diverging"}))
    html = progress_html(str(run))
    assert "qs-warning" in html and "training may be diverging" in html
    (run / "status.json").write_text(json.dumps({"state": "running", "step": 6, "max_steps": 10, "started": 1.0}))
    assert "qs-warning" not in progress_html(str(run))


def _dataset(tmp_path, lengths):
    from core import paths

    folder = paths.datasets() / tmp_path.name  # the panel reads datasets from the workspace only
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"counts": {"train": len(lengths)}, "stats": {"lengths": lengths}}))
    return str(folder)


def test_plan_counts_updates_passes_and_tokens_an_update(tmp_path):
    from core.plan import plan

    data = _dataset(tmp_path, [100, 300, 700] * 100)  # 300 rows; 700 is cut to 512: 304 tokens a row
    tutorial = plan(data, 4, 4, 512, False, 100, 1.0)
    assert tutorial == {"updates": 100, "passes": 5.33, "tokens_per_update": 4864, "rows_per_update": 16.0,
                        "template": "seed", "template_why": "chosen"}
    packed = plan(data, 16, 1, 512, True, 100, 1.0)
    assert packed["tokens_per_update"] == 16 * 512 and packed["passes"] == round(100 * 8192 / (300 * 304), 2)
    by_epochs = plan(data, 16, 1, 512, True, 0, 2.0)
    assert by_epochs["passes"] == 2.0 and by_epochs["updates"] == -(-2 * 300 * 304 // 8192)
    assert plan(str(tmp_path / "missing"), 4, 4, 512, False, 100, 1.0) is None


def test_train_tab_warns_when_the_settings_go_over_little_data_many_times(tmp_path):
    from core.config import TrainConfig
    from ui.train import SETTINGS, plan_text

    data = _dataset(tmp_path, [40] * 64)  # 64 short rows: less than one packed update
    values = [getattr(TrainConfig(), n) for n in SETTINGS]
    text = plan_text(None, data, *values)
    assert "**100 updates**" in text and "**100 passes**" in text and "learn it by heart" in text
    values[SETTINGS.index("max_steps")] = 3
    text = plan_text(None, data, *values)
    assert "**3 updates**" in text and "by heart" not in text
    assert plan_text(None, "", *values) == "" and plan_text(None, data, *[None] * len(SETTINGS)) == ""
    # A setting out of its range is said at once, in words and in the reader's language (it was gradio's English
    # popup, or nothing), and the plan's numbers of the last good settings are gone.
    values[SETTINGS.index("max_steps")], values[SETTINGS.index("seed")] = -3, -1
    zh = plan_text(_Page("zh"), data, *values)
    assert "⚠️ 最大步数：必须为 0 或更大" in zh and "⚠️ 随机种子：必须在 0 到 4294967295 之间" in zh and "updates" not in zh


def test_without_a_gpu_the_gpu_only_settings_are_greyed_out(monkeypatch):
    from core import gpus
    from ui import layout
    from ui.train import GPU_ONLY

    monkeypatch.setattr(gpus, "count", lambda: 0)
    demo = layout.build()
    by_label = {}
    for block in demo.blocks.values():
        key = getattr(getattr(block, "label", None), "key", None)
        if key and key.startswith("label_"):
            by_label.setdefault(key.removeprefix("label_"), []).append(block)
    for name in GPU_ONLY:
        assert all(b.interactive is False for b in by_label[name]), name
    assert by_label["lora_r"][0].interactive is not False
    monkeypatch.setattr(gpus, "count", lambda: 1)
    demo = layout.build()
    assert all(getattr(b, "interactive", None) is not False for b in demo.blocks.values()
               if getattr(getattr(b, "label", None), "key", None) == "label_quantization")


def test_with_several_gpus_the_train_tab_offers_them_and_says_how_they_share_an_update(tmp_path, monkeypatch):
    from core import gpus, monitor
    from core.config import TrainConfig
    from ui import layout
    from ui.train import SETTINGS, gpu_choices, plan_text

    cards = [{"index": i, "name": "NVIDIA H200", "memory_total_gb": 140.0, "memory_used_gb": 1.0} for i in (0, 1)]
    monkeypatch.setattr(monitor, "snapshot", lambda: {"gpus": cards})
    monkeypatch.setattr(gpus, "count", lambda: 2)
    assert gpu_choices() == [("the first GPU", ""), ("GPU 0 · NVIDIA H200 · 139 GiB free", "0"),
                             ("GPU 1 · NVIDIA H200 · 139 GiB free", "1"), ("all 2 GPUs, sharing each update", "0,1")]
    # A panel started with CUDA_VISIBLE_DEVICES offers only the GPUs it may use.
    monkeypatch.setattr(monitor, "snapshot", lambda: {"gpus": cards + [{**cards[0], "index": 2}]})
    monkeypatch.setattr(gpus, "count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert [value for _, value in gpu_choices()] == ["", "1", "2", "1,2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(monitor, "snapshot", lambda: {"gpus": cards})
    monkeypatch.setattr(gpus, "count", lambda: 2)
    demo = layout.build()
    picker = [b for b in demo.blocks.values() if getattr(getattr(b, "label", None), "key", None) == "label_gpus"]
    assert len(picker) == 1 and picker[0].visible and ("all 2 GPUs, sharing each update", "0,1") in picker[0].choices

    data = _dataset(tmp_path, [40] * 64)
    values = [getattr(TrainConfig(), n) for n in SETTINGS]
    values[SETTINGS.index("gpus")] = "0,1"
    assert "2 GPUs share each update: 8 rows x 1 accumulation on each, 16 rows an update" in plan_text(None, data, *values)
    values[SETTINGS.index("batch_size")] = 3
    assert "learning rate is multiplied by 1.15" in plan_text(None, data, *values)
# ---- a first run on a laptop: CPU-sized form, time estimate, did it learn ------------------
def test_without_a_gpu_the_form_shows_the_cpu_sized_default_that_will_run(monkeypatch):
    from core import gpus
    from core.config import CPU_SIZED
    from ui import layout
    from ui.train import fill_preset

    monkeypatch.setattr(gpus, "count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    shown = {}  # every value shown under each setting's label (max sequence length is in the Data tab too)
    for block in layout.build().blocks.values():
        key = getattr(getattr(block, "label", None), "key", None)
        if key and key.startswith("label_"):
            shown.setdefault(key.removeprefix("label_"), []).append(block.value)
    assert all(value in shown[k] for k, value in CPU_SIZED.items()), {k: shown[k] for k in CPU_SIZED}
    assert shown["batch_size"] == [4] and shown["quantization"] == ["none"]
    # Picking the default preset again fills the same CPU-sized values in.
    from ui.train import SETTINGS

    filled = dict(zip(SETTINGS, (u["value"] for u in fill_preset("default")), strict=True))
    assert {k: filled[k] for k in CPU_SIZED} == CPU_SIZED


def test_the_time_estimate_comes_from_a_measured_table_then_from_an_earlier_runs_speed(monkeypatch, base_model):
    from test_train import identity_dataset

    from core import paths
    from core.config import preset
    from core.plan import LONG_SECONDS, seconds
    from ui import train as tab

    # The table: a CPU's speed grows with its cores and falls with the model's size; an unknown GPU has no entry.
    assert seconds(60_000, 135_000_000, "cpu", 2) > seconds(60_000, 135_000_000, "cpu", 4)
    assert seconds(60_000, 1_350_000_000, "cpu", 2) > 5 * seconds(60_000, 135_000_000, "cpu", 2)
    assert seconds(1e6, 7e9, "NVIDIA H200") < seconds(1e6, 13e9, "NVIDIA H200")
    assert seconds(1e6, 7e9, "Some Future GPU") is None and seconds(1e6, 7e9, "Some Future GPU", measured=500) > 2000

    monkeypatch.setattr(tab, "on_cpu", lambda: True)
    cfg = preset("default", cpu=True)
    values = [getattr(cfg, n) for n in tab.SETTINGS]
    data = str(identity_dataset())
    with monkeypatch.context() as m:
        m.setattr(tab.runs, "measured_speed", lambda *a: None)  # whatever other tests left in the workspace
        text = tab.estimate_text(None, "default", data, "default", *values)
        assert "about **" in text and "min**" in text and "table of measured speeds" in text and "would take" not in text
        values[tab.SETTINGS.index("max_steps")] = 30000  # hours, however many cores the machine has
        long = tab.estimate_text(None, "default", data, "default", *values)
        assert "would take about" in long and "h**" in long  # hours, with a warning over LONG_SECONDS
        zh = tab.estimate_text(_Chinese(), "default", data, "default", *values)
        assert "大约" in zh and "小时" in zh

    # A finished run of this model on this CPU measured its speed: the estimate says it uses that instead.
    run = paths.runs() / "measured"
    run.mkdir(parents=True)
    cfg.replace(data=data, out=str(run)).save(run / "config.json")
    (run / "status.json").write_text(json.dumps({"state": "finished", "device": "cpu", "step": 15, "max_steps": 15}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 15, "loss": 0.5, "tokens_per_second": 1.0}) + "\n")
    values[tab.SETTINGS.index("max_steps")] = 15
    slow = tab.estimate_text(None, "default", data, "default", *values)
    assert "earlier run measured" in slow and "would take about" in slow  # 1 token a second: hours
    assert seconds(1, 1, "cpu", 1) < LONG_SECONDS


class _Chinese:
    headers = {"accept-language": "zh-CN,zh;q=0.9"}


def _finished(tmp_path, learned=None, eval_split=True):
    data = tmp_path / "data"
    data.mkdir(parents=True)
    if eval_split:
        (data / "eval.jsonl").write_text("{}\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"max_steps": 15, "data": str(data)}))
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": 15, "max_steps": 15,
                                                 "adapter": str(run / "adapter")}))
    if learned is not None:
        (run / "learned.json").write_text(json.dumps(learned))
    return str(run)


def test_after_a_run_the_train_tab_says_whether_it_learned_in_both_languages(tmp_path):
    worse = {"eval_rows": 6, "eval_loss_before": 1.25, "eval_loss_after": 2.5, "verdict": "worse",
             "samples": [{"question": "Who are you?", "expected": "I am Lumi.", "base": "I am SmolLM <b>",
                          "tuned": "#Title Space and Science"}]}
    run = _finished(tmp_path, worse)
    html = progress_html(run)
    assert "Did it learn?" in html and "base model 1.250 → tuned 2.500" in html
    assert "scores worse than the base model on held-out rows; try more steps, a lower learning rate" in html
    assert "I am SmolLM &lt;b&gt;" in html and "#Title Space and Science" in html and "I am Lumi." in html
    zh = progress_html(run, "zh")
    assert "学到了吗" in zh and "更差" in zh and "scores worse" not in zh
    better = progress_html(_finished(tmp_path / "b", {**worse, "eval_loss_after": 0.5, "verdict": "better"}))
    assert "scores better" in better and "worse" not in better
    assert "No eval split" in progress_html(_finished(tmp_path / "c", eval_split=False))


def test_the_runs_tab_shows_the_eval_loss_before_and_after(monkeypatch, tmp_path):
    from core import paths
    from ui import runs as tab

    run = paths.runs() / "learned-run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"max_steps": 15}))
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": 15}))
    (run / "learned.json").write_text(json.dumps({"eval_loss_before": 2.0, "eval_loss_after": 0.25, "verdict": "better"}))
    frame = tab.table()
    row = frame[frame["name"] == "learned-run"].iloc[0]
    assert row["eval loss (base → tuned)"] == "2.000 → 0.250 better"
    zh = tab.table(_Chinese())
    assert "2.000 → 0.250 更好" in zh.iloc[:, 11].tolist()


class _Page:
    """A request from the page with its 中文 / English switch set (the cookie i18n.lang reads)."""

    def __init__(self, language):
        from ui.i18n import COOKIE

        self.headers = {"cookie": f"{COOKIE}={language}"}


def test_a_bad_setting_is_shown_in_the_pages_language(tmp_path):
    from core.config import TrainConfig
    from ui.train import SETTINGS, start

    data = _dataset(tmp_path, [40] * 8)
    values = [getattr(TrainConfig(), n) for n in SETTINGS]
    values[SETTINGS.index("lora_dropout")] = 0.9
    zh, _ = start(_Page("zh"), "default", data, "default", "", "", *values)
    assert "⚠️ LoRA dropout：必须在 0 到 0.5 之间" in zh and "must be" not in zh
    en, _ = start(_Page("en"), "default", data, "default", "", "", *values)
    assert "⚠️ LoRA dropout: must be between 0 and 0.5" in en and "必须" not in en


def test_a_failed_jobs_error_is_shown_in_the_pages_language(tmp_path):
    import errno
    import logging

    from core import status

    run = tmp_path / "run"
    run.mkdir()
    # What a training child writes when the disk fills up while it saves.
    error, hint = status.explain(OSError(errno.ENOSPC, "No space left on device", "adapter.safetensors"))
    status.Status(run).last_word(logging.getLogger("test"), state="failed", error=error, hint=hint)
    zh = progress_html(str(run), "zh")
    assert "磁盘已满：No space left on device（adapter.safetensors）" in zh and "请腾出磁盘空间" in zh
    assert "disk full" not in zh
    en = progress_html(str(run), "en")
    assert "disk full: No space left on device (adapter.safetensors)" in en and "free some disk space" in en


def test_the_stopping_line_goes_once_the_run_has_stopped(tmp_path):
    """"Will stop after the current step" stayed under the buttons beside "stopped"; it goes once the run Stop was
    pressed for has ended, and not before (nor with nothing stopped)."""
    import gradio as gr

    from core import status
    from ui.train import stop_settled

    run = tmp_path / "run"
    run.mkdir()
    status.Status(run).update(state="stopping")
    assert stop_settled(str(run)) == (gr.update(), gr.update()) and stop_settled("") == (gr.update(), gr.update())
    status.Status(run).update(state="stopped")
    assert stop_settled(str(run)) == ("", "")


def test_a_resumed_runs_clock_goes_on_from_the_time_it_trained_before(tmp_path):
    """After Resume the elapsed time started again from 0:00:00; it goes on from what the run had spent."""
    import time

    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "running", "step": 6, "max_steps": 10,
                                                 "started": time.time() - 60, "elapsed_before": 3600}))
    assert "elapsed 1:01:00" in progress_html(str(run))
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": 10, "max_steps": 10,
                                                 "started": 100.0, "ended": 220.0, "elapsed_before": 3600}))
    assert "elapsed 1:02:00" in progress_html(str(run))


def test_no_run_selected_goes_once_a_run_is_started(monkeypatch):
    """"还没有选择训练记录。" (Resume pressed with no run shown) stayed on screen after a training had started."""
    from types import SimpleNamespace

    import gradio as gr

    from core import jobs
    from ui import layout
    from ui.i18n import both
    from ui.train import no_run_settled, resume

    monkeypatch.setattr(jobs, "current", lambda *a, **k: None)
    line, _, _ = resume("", "", "")
    assert "还没有选择训练记录。" in line and "No run selected." in line
    assert no_run_settled("", line) == gr.update()  # still no run: it stays
    # A training starts (from this page, another one or a terminal): the line goes at the next tick.
    monkeypatch.setattr(jobs, "current", lambda *a, **k: SimpleNamespace(kind="train"))
    assert no_run_settled("", line) == ""
    # A run picked (or started here, which shows it): the line goes too; any other line stays.
    monkeypatch.setattr(jobs, "current", lambda *a, **k: None)
    assert no_run_settled("/ws/runs/a", line) == ""
    assert no_run_settled("/ws/runs/a", both("started", run="a")) == gr.update()
    # It is asked at every tick of the live view and whenever the run shown changes.
    events = {event for f in layout.build().fns.values() if f.fn is no_run_settled for _, event in f.targets}
    assert events == {"tick", "change"}


def test_an_absurd_number_of_steps_is_refused_in_the_pages_language(tmp_path, monkeypatch):
    from core import jobs
    from core.config import TrainConfig
    from ui.train import SETTINGS, plan_text, start

    monkeypatch.setattr(jobs, "start_train", lambda *a, **k: pytest.fail("a run started"))
    data = _dataset(tmp_path, [40] * 8)
    values = [getattr(TrainConfig(), n) for n in SETTINGS]
    values[SETTINGS.index("max_steps")] = 1_000_000_000
    zh, _ = start(_Page("zh"), "default", data, "default", "", "", *values)
    assert zh == "⚠️ 最大步数：最多 1,000,000（一百万次更新）；填 0 则按训练轮数训练"
    en, _ = start(_Page("en"), "default", data, "default", "", "", *values)
    assert en == "⚠️ Max steps: must be at most 1,000,000 (a million updates); 0 trains for the given epochs instead"
    assert "最多 1,000,000" in plan_text(_Page("zh"), data, *values)  # said at once, before Start


def test_a_curve_of_one_logged_point_is_drawn(tmp_path):
    """A 5-step run that logs every 10 steps has one point until its last step (the chart draws lines, not dots):
    the chart stood empty. A lone point is drawn as a short level dash ending at it; two points are a line as before."""
    from math import isnan

    from ui.live import chart

    run = tmp_path / "run"
    run.mkdir()
    frame = chart(str(run), [{"step": 1, "loss": 2.5, "max_steps": 5}], "en")["value"]
    drawn = frame[(frame["series"] == "train") & ~frame["loss"].map(isnan)].sort_values("step")
    assert len(drawn) == 2 and drawn["loss"].tolist() == [2.5, 2.5] and drawn["step"].iloc[-1] == 1
    assert 0 < 1 - drawn["step"].iloc[0] <= 1  # a dash shorter than a step, before the point
    frame = chart(str(run), [{"step": 1, "loss": 2.5, "max_steps": 5}, {"step": 5, "loss": 1.5, "max_steps": 5}], "en")
    drawn = frame["value"][frame["value"]["series"] == "train"]
    assert drawn["step"].tolist() == [1, 5] and drawn["loss"].tolist() == [2.5, 1.5]


def test_a_diverging_loss_is_warned_about_in_the_readers_language(tmp_path):
    """The warning the training guard writes carries its Chinese into status.json, and a Chinese page shows that."""
    import logging

    from core.callbacks import Guard
    from core.status import Status

    run = tmp_path / "run"
    run.mkdir()
    status = Status(run)
    status.update(state="running", step=6, max_steps=10, started=1.0)
    guard = Guard(status, logging.getLogger("qlora_studio.test"), fp16=False)
    from types import SimpleNamespace

    for step, loss in enumerate([2.1, 2.0, 7.5, 9.0, 9.7], start=1):
        guard.on_log(None, SimpleNamespace(global_step=step), SimpleNamespace(), logs={"loss": loss})
    zh, en = progress_html(str(run), "zh"), progress_html(str(run), "en")
    assert "训练可能在发散" in zh and "训练可能在发散" not in en and "training may be diverging" in en
