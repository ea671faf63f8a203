"""The panel: one Blocks app joining the tabs, with the wiring between them."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui import chat, data, merge, models, notice, runs, train
from ui.i18n import I18N, t

CSS = (Path(__file__).resolve().parent.parent / "assets" / "style.css")


def _reattach(request: gr.Request = None):
    """On page load: show the running training (or the newest run) from its first step, fresh lists."""
    shown = train.shown_run("")
    return (gr.update(choices=train.run_choices(), value=shown or None), gr.update(choices=train.datasets()),
            gr.update(choices=merge.finished_runs(request)), runs.table(request), *chat.build_refresh())


def build() -> gr.Blocks:
    """The whole panel (launch it with `launch_kwargs()`)."""
    with gr.Blocks(title="QLoRA Studio") as demo:
        with gr.Row():
            gr.Markdown(t("title"))
            notice.build()
        with gr.Tabs() as tabs:
            with gr.Tab(t("tab_data"), id="data", elem_id="tab-data") as data_tab:
                d = data.build()
            with gr.Tab(t("tab_train"), id="train", elem_id="tab-train") as train_tab:
                tr = train.build()
            with gr.Tab(t("tab_merge"), id="merge", elem_id="tab-merge") as merge_tab:
                m = merge.build()
            with gr.Tab(t("tab_chat"), id="chat", elem_id="tab-chat") as chat_tab:
                c = chat.build()
            with gr.Tab(t("tab_runs"), id="runs", elem_id="tab-runs") as runs_tab:
                r = runs.build()
            with gr.Tab(t("tab_models"), id="models", elem_id="tab-models") as models_tab:
                mo = models.build()
        # Opening a tab refreshes its lists: a dataset saved, a run finished or a model merged meanwhile.
        train_tab.select(lambda: (gr.update(choices=train.datasets()), gr.update(choices=train.run_choices()),
                                  gr.update(choices=train.model_choices())),
                         None, [tr["data"], tr["viewed"], tr["model"]], api_name=False)
        models_tab.select(models.table, None, mo["frame"], api_name=False)
        data_tab.select(lambda: gr.update(choices=data.files()), None, d["source"], api_name=False)  # a sampled dataset
        merge_tab.select(merge.refresh, None, m["run"], api_name=False)
        merge_tab.select(merge.refresh_models, None, m["model"], api_name=False)
        chat_tab.select(chat.build_refresh, None, [c["source_a"], c["source_b"]], api_name=False)
        runs_tab.select(runs.table, None, r["frame"], api_name=False)
        runs_tab.select(runs.refresh_choices, None, r["picked"], api_name=False)
        # A saved dataset is offered (and chosen) in the Train tab at once.
        d["dataset"].change(lambda p: gr.update(choices=train.datasets(), value=p or None), d["dataset"], tr["data"],
                            api_name=False)
        # Runs tab buttons open the selected run elsewhere.
        r["to_train"].click(lambda s: (gr.update(choices=train.run_choices(), value=s), gr.Tabs(selected="train")),
                            r["selected"], [tr["viewed"], tabs], api_name=False)
        r["to_merge"].click(_open_merge, r["selected"], [m["run"], tabs], api_name=False)
        r["to_chat"].click(_open_chat, r["selected"], [c["source_a"], c["source_b"], tabs], api_name=False)
        demo.load(_reattach, None, [tr["viewed"], tr["data"], m["run"], r["frame"], c["source_a"], c["source_b"]],
                  api_name="reattach")
        demo.load(data.titles, None, d["hist"], api_name=False)
        demo.load(models.reattach, None, [mo["note"], mo["progress"], mo["log"], mo["timer"]],
                  api_name=False)
    return demo


def _open_merge(run: str, request: gr.Request = None):
    return gr.update(choices=merge.finished_runs(request), value=run), gr.Tabs(selected="merge")


def _open_chat(run: str):
    adapter = str(Path(run) / "adapter") if run else ""
    choices = chat.sources()
    return (gr.update(choices=choices, value=chat.ADAPTER + adapter if adapter else "default"),
            gr.update(choices=[("—", "")] + choices, value="default" if adapter else ""), gr.Tabs(selected="chat"))


def launch_kwargs() -> dict:
    """Arguments for demo.launch(): translations, stylesheet, a quiet footer."""
    kw = dict(i18n=I18N, footer_links=["settings", "api"])
    if CSS.is_file():
        kw["css_paths"] = [CSS]
    return kw
