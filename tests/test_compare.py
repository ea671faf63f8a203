"""The Runs tab: comparing runs (loss curves on one chart, settings side by side, "did it learn") and the buttons
that open the selected run in another tab."""

from __future__ import annotations

import json
import re

import pytest
from test_runs import make_run

from ui import runs as runs_tab


class Reader:
    def __init__(self, language: str):
        self.headers = {"accept-language": language}


def two_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    a = make_run(tmp_path, "lr-high", {"state": "finished", "started": 100},
                 '{"step": 10, "loss": 2.0}\n{"step": 10, "eval_loss": 2.2}\n{"step": 20, "loss": 1.5}\n',
                 learning_rate=3e-4, lora_r=16)
    b = make_run(tmp_path, "lr-low", {"state": "finished", "started": 200},
                 '{"step": 10, "loss": 2.4}\n{"step": 20, "loss": 2.1}\n', learning_rate=1e-4, lora_r=16)
    (a / "learned.json").write_text(json.dumps({"eval_rows": 8, "eval_loss_before": 2.61, "eval_loss_after": 1.93,
                                                "verdict": "better"}))
    return str(a), str(b)


def test_two_runs_on_one_chart_with_their_settings_and_what_they_learned(tmp_path, monkeypatch):
    a, b = two_runs(tmp_path, monkeypatch)
    note, plot, settings, learned = runs_tab.compare([a, b], Reader("en"))
    assert plot["visible"] and settings["visible"] and learned["visible"]
    curves = plot["value"]
    # One series per run and kind: each run has its own colour on the chart.
    assert set(curves["series"]) == {"lr-high · train", "lr-high · eval", "lr-low · train"}
    assert curves[curves["series"] == "lr-low · train"]["loss"].tolist() == [2.4, 2.1]
    # Settings side by side; the rows that differ are highlighted, the rest are not.
    settings, learned = settings["value"], learned["value"]
    table = settings.data.set_index("Setting")
    assert table.loc["Learning rate"].tolist() == ["0.0003", "0.0001"]
    assert table.loc["LoRA rank (r)"].tolist() == ["16", "16"]
    rows = list(settings.data["Setting"])
    marked = re.findall(r"([^{}]+)\{\s*background-color", settings.to_html())
    highlighted = {rows[int(r)] for selectors in marked for r in re.findall(r"_row(\d+)_", selectors)}
    assert "Learning rate" in highlighted and "LoRA rank (r)" not in highlighted and "Random seed" not in highlighted
    assert rows[0] == "Learning rate"  # the differences come first
    assert note == "Settings that differ: 1 (highlighted)."
    # The "did it learn" numbers where the run has them, and a dash where it has none.
    numbers = learned.set_index("Measure")
    assert numbers.loc["Eval loss before training"].tolist() == ["2.61", "—"]
    assert numbers.loc["Eval loss after training"].tolist() == ["1.93", "—"]
    assert numbers.loc["Verdict"].tolist() == ["better", "—"]


def test_compare_in_chinese_and_asks_for_two_runs(tmp_path, monkeypatch):
    a, b = two_runs(tmp_path, monkeypatch)
    note, *_ = runs_tab.compare([a], Reader("zh-CN"))
    assert "至少选两次" in note
    note, plot, settings, learned = runs_tab.compare([a, b], Reader("zh-CN"))
    assert "lr-high · 评估" in set(plot["value"]["series"]) and "设置" in settings["value"].data.columns
    assert learned["value"].set_index("指标").loc["结论"].tolist() == ["更好", "—"]


def test_a_folder_outside_the_runs_is_refused(tmp_path, monkeypatch):
    a, _ = two_runs(tmp_path, monkeypatch)
    note, *_ = runs_tab.compare([a, "/etc"], Reader("en"))
    assert note.startswith("⚠️") and "/etc" in note



def cpu_tutorial_and_gpu_default(tmp_path, monkeypatch):
    """A tutorial run trained on a CPU and a default run trained on a GPU, each with the used.json its trainer wrote."""
    import torch

    from core import runs, status
    from core.config import PRESETS, TrainConfig
    from core.trainer import Device, used

    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    cpu = make_run(tmp_path, "tutorial-cpu", {"state": "finished", "started": 100}, '{"step": 1, "loss": 2.0}\n',
                   preset="tutorial", **PRESETS["tutorial"])
    gpu = make_run(tmp_path, "default-gpu", {"state": "finished", "started": 200}, '{"step": 1, "loss": 2.0}\n')
    for run, dev in ((cpu, Device("cpu", "LoRA float32 (no GPU)", "", False, torch.float32)),
                     (gpu, Device("cuda:0 NVIDIA H200", "4-bit NF4 (bf16 compute)", "", True, torch.bfloat16))):
        status.write_json(run / runs.USED, used(TrainConfig.load(run / "config.json"), dev))
    return str(cpu), str(gpu)


def test_the_settings_table_shows_what_each_run_trained_with(tmp_path, monkeypatch):
    """A tutorial run on a CPU asked for 4-bit and fp16 but trained in float32 without quantization: the table says
    what it used (and what was asked for), not what the form asked for."""
    cpu, gpu = cpu_tutorial_and_gpu_default(tmp_path, monkeypatch)
    _, _, settings, _ = runs_tab.compare([cpu, gpu], Reader("en"))
    table = settings["value"].data.set_index("Setting")
    assert table.loc["Quantization"].tolist() == ["none (plain LoRA) (asked for 4-bit NF4)", "4-bit NF4"]
    assert table.loc["Compute dtype"].tolist() == ["float32 (asked for float16)", "bfloat16 (asked for auto)"]
    assert table.loc["Double quantization"].tolist() == ["no (asked for yes)", "yes"]
    assert table.loc["Offload activations to CPU"].tolist()[0] == "no"  # the tutorial did not ask for it either
    assert table.loc["Preset"].tolist() == ["tutorial", "default"]


def test_the_settings_table_speaks_chinese_on_a_chinese_page(tmp_path, monkeypatch):
    """Each setting by its label, yes / no and the choices in words: no raw key (lora_r), no True / False."""
    cpu, gpu = cpu_tutorial_and_gpu_default(tmp_path, monkeypatch)
    _, _, settings, _ = runs_tab.compare([cpu, gpu], Reader("zh-CN"))
    frame = settings["value"].data
    table = frame.set_index("设置")
    assert table.loc["量化方式"].tolist() == ["不量化（普通 LoRA）（设置为 4 位 NF4）", "4 位 NF4"]
    assert table.loc["双重量化"].tolist() == ["否（设置为 是）", "是"]
    assert table.loc["LoRA 秩 (r)"].tolist() == ["64", "64"] and table.loc["预设"].tolist() == ["教程", "默认"]
    assert table.loc["损失计算范围"].tolist() == ["全文", "仅回答部分"]
    assert table.loc["模型"].tolist() == ["内置的 SmolLM2-135M-Instruct"] * 2
    # Every setting is named in Chinese (a few names stay as they are: LoRA alpha, LoRA dropout).
    assert [name for name in frame["设置"] if not re.search("[\u4e00-\u9fff]", name)] == ["LoRA alpha", "LoRA dropout"]
    # No English word is left in the values: only numbers, names (float32, adamw_torch, paths) and Chinese.
    words = {w for cell in frame.iloc[:, 1:].to_numpy().ravel() for w in re.findall(r"[A-Za-z]{2,}", cell)}
    assert words <= {"float", "bfloat", "LoRA", "NF", "SmolLM", "Instruct", "adamw", "torch", "qlora", "studio",
                     "belle", "x", "datasets"}, words


@pytest.mark.parametrize("key", ["open_train", "open_merge", "open_chat"])
def test_a_button_for_the_selected_run_asks_for_one_when_none_is_selected(key):
    """With no row selected, "Show in Train", "Merge this run" and "Chat with this run" switched tabs (to an empty
    form) or did nothing: now they say a run must be picked first, in both languages, and the page stays."""
    import gradio as gr

    from ui import layout
    from ui.i18n import say

    demo = layout.build()
    button = next(b for b in demo.blocks.values() if isinstance(b, gr.Button) and f'"key": "{key}"' in str(b.value))
    tabs = next(b for b in demo.blocks.values() if isinstance(b, gr.Tabs))
    press = next(f for f in demo.fns.values() if (button._id, "click") in f.targets)
    outputs = dict(zip([o._id for o in press.outputs], press.fn(""), strict=True))
    assert outputs[tabs._id] == gr.update()  # no tab switch
    note = [v for v in outputs.values() if isinstance(v, str) and v]
    assert len(note) == 1 and say("pick_run_first", "zh") in note[0] and say("pick_run_first", "en") in note[0]
    # A run selected: its tab opens and the line goes.
    outputs = dict(zip([o._id for o in press.outputs], press.fn("/somewhere/runs/a"), strict=True))
    assert outputs[tabs._id] != gr.update() and "" in outputs.values()



def test_a_compared_curve_of_one_point_is_drawn(tmp_path, monkeypatch):
    """lr-high has one eval point: the chart draws lines, so it did not show; it is drawn as a dash."""
    from math import isnan

    a, b = two_runs(tmp_path, monkeypatch)
    curves = runs_tab.compare([a, b], Reader("en"))[1]["value"]
    drawn = curves[(curves["series"] == "lr-high · eval") & ~curves["loss"].map(isnan)].sort_values("step")
    assert drawn["loss"].tolist() == [2.2, 2.2] and drawn["step"].iloc[-1] == 10 and drawn["step"].iloc[0] > 9


def test_the_comparison_chart_counts_whole_steps(tmp_path, monkeypatch):
    """Two 20-step runs were drawn over 0..20 and the axis ticked 0.5, 1, 1.5 ...; it now spans at least as many steps
    as the Train tab's chart (whose ticks fall on whole steps), or the longest run."""
    from ui.live import MIN_SPAN

    a, b = two_runs(tmp_path, monkeypatch)
    _, plot, _, _ = runs_tab.compare([a, b], Reader("en"))
    assert plot["x_lim"] == [0, MIN_SPAN]
    long = make_run(tmp_path, "long", {"state": "finished", "started": 300}, '{"step": 1, "loss": 2.0}\n'
                    '{"step": 250, "loss": 1.0}\n')
    _, plot, _, _ = runs_tab.compare([a, str(long)], Reader("en"))
    assert plot["x_lim"] == [0, 250]


def test_the_two_comparison_tables_are_each_as_wide_as_the_page():
    """Side by side in one row the settings table's last run column was cut off: they stand one under the other."""
    import gradio as gr

    from ui import layout

    tables = [b for b in layout.build().blocks.values()
              if isinstance(b, gr.Dataframe) and "compare_" in str(getattr(b, "label", ""))]
    assert len(tables) == 2 and not any(isinstance(t.parent, gr.Row) for t in tables)
