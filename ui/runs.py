"""Runs tab: every run with its state, model, data, key settings and final loss."""

from __future__ import annotations

from datetime import datetime

import gradio as gr
import pandas as pd

from core import runs
from ui.i18n import lang, say, t

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
        row["state"] = say("state_" + r["state"], language)
        if r["state"] == "failed" and r.get("error"):
            row["state"] += f": {r['error']}"
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS).set_axis([say("col_" + c, language) for c in COLUMNS], axis=1)


def learned_cell(found: dict, language: str) -> str:
    """Did the run learn, in one cell: the eval loss of the base model and of the tuned one, and the verdict."""
    before, after = found.get("eval_loss_before"), found.get("eval_loss_after")
    if before is None or after is None:
        return ""
    return f"{before:.3f} → {after:.3f} {say('verdict_' + found.get('verdict', 'unknown'), language)}"


def select(frame: pd.DataFrame, evt: gr.SelectData):
    """The folder of the clicked row (the last column, whatever the language of its header)."""
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    try:
        return frame.iloc[row, -1]
    except (IndexError, KeyError, TypeError):
        return ""


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
    frame.select(select, frame, selected, api_name=False)
    refresh.click(table, None, frame, api_name="runs")
    return {"frame": frame, "selected": selected, "to_train": to_train, "to_merge": to_merge, "to_chat": to_chat}
