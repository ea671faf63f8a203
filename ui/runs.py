"""Runs tab: every run with its state, model, data, key settings and final loss; two or more compared."""

from __future__ import annotations

from datetime import datetime

import gradio as gr
import pandas as pd

from core import paths, runs, status
from core.errors import UserError
from ui import live
from ui.forms import WARN, setting_words, warn
from ui.i18n import SAY, both, lang, say, state, t

COLUMNS = ["name", "state", "step", "model", "data", "preset", "r", "lr", "steps", "batch", "final_loss", "learned",
           "created", "folder"]


def table(request: gr.Request = None) -> pd.DataFrame:
    """The runs list as a table, newest first, with headers and states in the reader's language."""
    language = lang(request)
    rows = []
    for r in runs.list_runs():
        row = {k: r.get(k) for k in COLUMNS}
        row["step"] = f"{r.get('step') or 0}/{r.get('max_steps') or '?'}"
        row["created"] = datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M") if r.get("created") else ""
        row["final_loss"] = round(r["final_loss"], 4) if r.get("final_loss") is not None else None
        row["learned"] = learned_cell(r.get("learned") or {}, language)
        row["state"] = state(r["state"], r.get("adapter"), language)
        if r["state"] == "failed" and r.get("error"):
            row["state"] += f": {status.words(r, language)[0]}"
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS).set_axis([say("col_" + c, language) for c in COLUMNS], axis=1)


def learned_cell(found: dict, language: str) -> str:
    """Did the run learn, in one cell: the eval loss of the base model and of the tuned one, and the verdict."""
    before, after = found.get("eval_loss_before"), found.get("eval_loss_after")
    if before is None or after is None:
        return ""
    return f"{before:.3f} → {after:.3f} {say('verdict_' + found.get('verdict', 'unknown'), language)}"


def pick_first() -> str:
    """What a button acting on the selected run says when no run is selected (both languages: it stays on screen)."""
    return WARN + both("pick_run_first")


def select(frame: pd.DataFrame, evt: gr.SelectData):
    """The folder of the clicked row (the last column, whatever the language of its header)."""
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    try:
        return frame.iloc[row, -1]
    except (IndexError, KeyError, TypeError):
        return ""


# ---- compare runs ------------------------------------------------------------------------------
LEARNED = ("eval_loss_before", "eval_loss_after", "verdict", "eval_rows")
DIFFERS = "background-color: #fef3c7; font-weight: 600"
NONE = "—"


def run_choices() -> list[tuple[str, str]]:
    """Every run as (name, folder), newest first."""
    return [(r["name"], r["folder"]) for r in runs.list_runs()]


def refresh_choices():
    return gr.update(choices=run_choices())


def _shown(value) -> str:
    if value is None or value == "":
        return NONE
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def curves_frame(view: dict, language: str) -> pd.DataFrame:
    """Every run's train and eval loss by step, one series (and colour) per run and kind (a curve of one point drawn
    as a dash)."""
    names = {"train": say("series_train", language), "eval": say("series_eval", language)}
    rows = [{"step": c["step"], "loss": c["loss"], "series": f"{c['run']} · {names[c['series']]}"} for c in view["curves"]]
    rows = live.with_lone_points_drawn(rows, steps_span(view) / live.DASH)
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype(
        {"step": live.steps_type(rows), "loss": "float64", "series": "string"})


def steps_span(view: dict) -> int:
    """The comparison chart's x axis: the longest curve's steps, and enough for its ticks to fall on whole steps."""
    return live.span(c["step"] for c in view["curves"])


def value_words(name: str, value, language: str) -> str:
    """A setting's value as the table shows it: yes / no, a choice in words (4-bit NF4, 仅回答部分), a number."""
    if isinstance(value, bool):
        return say("yes" if value else "no", language)
    key = f"value_{name}_{value}"
    return say(key, language) if isinstance(value, str) and key in SAY["en"] else _shown(value)


def settings_frame(view: dict, language: str):
    """The settings each run trained with side by side, one column per run, each named by its label; the rows
    whose values differ are highlighted, and a value the machine changed says what was asked for."""
    setting = say("col_setting", language)
    asked = view.get("asked", {})
    # The differences first: they are what a comparison is for.
    names = sorted(view["settings"], key=lambda name: name not in view["differ"])
    rows = []
    for name in names:
        row = {setting: setting_words(name, language) or name}
        for i, (run, value) in enumerate(zip(view["runs"], view["settings"][name], strict=True)):
            row[run] = value_words(name, value, language)
            if name in asked and asked[name][i] != value and asked[name][i] is not None:
                row[run] = say("compare_asked", language, value=row[run],
                               asked=value_words(name, asked[name][i], language))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[setting, *view["runs"]])
    differ = [name in view["differ"] for name in names]
    return frame.style.apply(lambda row: [DIFFERS if differ[row.name] else ""] * len(row), axis=1)


def learned_frame(view: dict, language: str) -> pd.DataFrame:
    """Each run's "did it learn" numbers (eval loss before and after training); — where a run has none."""
    measure = say("col_measure", language)
    rows = []
    for key in LEARNED:
        values = [d.get(key) for d in view["learned"]]
        if key == "verdict":
            values = [say("verdict_" + v, language) if v else None for v in values]
        rows.append({measure: say("learned_" + key, language),
                     **{run: _shown(v) for run, v in zip(view["runs"], values, strict=True)}})
    return pd.DataFrame(rows, columns=[measure, *view["runs"]])


def compare(picked: list[str] | None, request: gr.Request = None):
    """Two or more runs on one chart, their settings and their "did it learn" numbers side by side."""
    language = lang(request)
    picked = [p for p in (picked or []) if p]
    if len(picked) < 2:
        return warn(say("compare_pick_two", language)), gr.update(), gr.update(), gr.update()
    try:
        view = runs.compare([paths.inside(p, paths.runs(), "run") for p in picked])
    except UserError as e:
        return warn(e, language=language), gr.update(), gr.update(), gr.update()
    plot = gr.update(value=curves_frame(view, language), x_title=say("chart_step", language),
                     y_title=say("chart_loss", language), color_title=say("chart_series", language),
                     x_lim=[0, steps_span(view)])
    differ = len(view["differ"])
    shown = dict(visible=True)
    return (say("compare_differ", language, n=differ), gr.update(**plot, **shown),
            gr.update(value=settings_frame(view, language), **shown), gr.update(value=learned_frame(view, language), **shown))


def recolor(plot):
    """The comparison's curves, each given its colour once their points are on the chart (`plot`: its columns and rows).

    The chart colours only the curves it knew when its drawing was last set up, and sets it up again, with the
    points it then holds, only when a setting of its own changes: points given with new settings are drawn
    with the old set-up (a third run added to a comparison, or the names of the curves in another language,
    were drawn without a colour: no line). So the colours come in a second step, after the points.
    """
    columns = (plot or {}).get("columns") or []
    if "series" not in columns:
        return gr.update()
    names = list(dict.fromkeys(row[columns.index("series")] for row in plot["data"]))
    return gr.update(color_map={name: live.PALETTE[i % len(live.PALETTE)] for i, name in enumerate(names)}) if names else gr.update()


def build() -> dict:
    """The Runs tab's widgets; the layout wires its buttons to the other tabs."""
    gr.Markdown(t("runs_intro"))
    # Headers on one line and the table scrolls sideways: wrapped, "batch" stood as ba/tc/h and the last columns were cut.
    frame = gr.Dataframe(table(), interactive=False, wrap=False, max_height=420, elem_id="runs-table")
    with gr.Row():
        selected = gr.Textbox(label=t("selected"), interactive=False, scale=4)
        refresh = gr.Button(t("refresh"), size="sm", scale=1)
    with gr.Row():
        to_train = gr.Button(t("open_train"))
        to_merge = gr.Button(t("open_merge"))
        to_chat = gr.Button(t("open_chat"))
    pick_note = gr.Markdown()  # "pick a run first", after a button pressed with none selected
    frame.select(select, frame, selected, api_name=False)
    frame.select(lambda: "", None, pick_note, api_name=False, show_progress="hidden")
    refresh.click(table, None, frame, api_name="runs")
    gr.Markdown(t("compare_intro"))
    with gr.Row():
        picked = gr.Dropdown(run_choices(), multiselect=True, label=t("compare_pick"), scale=4)
        go = gr.Button(t("compare_btn"), variant="primary", scale=1)
    note = gr.Markdown()
    # Hidden until two runs are compared: empty, they would only show placeholder headers.
    # Whole steps on the axis: it spans at least live.MIN_SPAN steps (as the Train tab's chart does).
    plot = gr.LinePlot(curves_frame({"curves": []}, "en"), x="step", y="loss", color="series",
                       label=t("loss_chart"), height=420, visible=False, x_lim=[0, live.MIN_SPAN])
    # One under the other, each as wide as the page: side by side, the settings' last run column was cut off.
    settings = gr.Dataframe(label=t("compare_settings"), interactive=False, wrap=True, max_height=420, visible=False)
    learned = gr.Dataframe(label=t("compare_learned"), interactive=False, wrap=True, visible=False)
    go.click(compare, picked, [note, plot, settings, learned], api_name="compare").then(
        recolor, plot, plot, api_name=False, show_progress="hidden")
    return {"frame": frame, "selected": selected, "to_train": to_train, "to_merge": to_merge, "to_chat": to_chat,
            "pick_note": pick_note, "picked": picked, "relabel": (table, None, frame)}
