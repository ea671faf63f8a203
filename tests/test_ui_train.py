"""The Train tab's progress panel, rendered from a run folder alone."""

import json

from ui.train import progress_html


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
    demo = layout.build()
    picker = [b for b in demo.blocks.values() if getattr(getattr(b, "label", None), "key", None) == "label_gpus"]
    assert len(picker) == 1 and picker[0].visible and ("all 2 GPUs, sharing each update", "0,1") in picker[0].choices

    data = _dataset(tmp_path, [40] * 64)
    values = [getattr(TrainConfig(), n) for n in SETTINGS]
    values[SETTINGS.index("gpus")] = "0,1"
    assert "2 GPUs share each update: 8 rows x 1 accumulation on each, 16 rows an update" in plan_text(None, data, *values)
    values[SETTINGS.index("batch_size")] = 3
    assert "learning rate is multiplied by 1.15" in plan_text(None, data, *values)
