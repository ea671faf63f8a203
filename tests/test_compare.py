"""Comparing runs in the Runs tab: loss curves on one chart, settings side by side, "did it learn"."""

from __future__ import annotations

import json
import re

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
    assert table.loc["learning_rate"].tolist() == ["0.0003", "0.0001"] and table.loc["lora_r"].tolist() == ["16", "16"]
    rows = list(settings.data["Setting"])
    marked = re.findall(r"([^{}]+)\{\s*background-color", settings.to_html())
    highlighted = {rows[int(r)] for selectors in marked for r in re.findall(r"_row(\d+)_", selectors)}
    assert "learning_rate" in highlighted and "lora_r" not in highlighted and "seed" not in highlighted
    assert rows[0] == "learning_rate"  # the differences come first
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
