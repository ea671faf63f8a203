"""The panel: one Blocks app joining the tabs, with the wiring between them."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui import chat, data, live, merge, models, notice, runs, train
from ui.i18n import I18N, LANGUAGES, LOAD_JS, SWITCH_JS, lang, t

CSS = (Path(__file__).resolve().parent.parent / "assets" / "style.css")


def _reattach(request: gr.Request = None):
    """On page load: show the running training (or the newest run) from its first step, fresh lists."""
    shown = live.shown_run("")
    return (gr.update(choices=train.run_choices(), value=shown or None), gr.update(choices=train.datasets()),
            gr.update(choices=merge.finished_runs(request)), runs.table(request), *chat.build_refresh(request))


TABS = ("tab_data", "tab_train", "tab_merge", "tab_chat", "tab_runs", "tab_models")


def build() -> gr.Blocks:
    """The whole panel (launch it with `launch_kwargs()`)."""
    with gr.Blocks(title="QLoRA Studio") as demo:
        with gr.Row(equal_height=True, elem_id="qs-header"):
            gr.Markdown(t("title"))
            notice.build()
            switch = gr.Radio(LANGUAGES, value=None, label=t("language"), show_label=False, container=False, scale=0, min_width=220,
                              elem_id="qs-language")
        # Every tab is drawn at once (hidden until opened): a tab never opened follows the language switch too.
        with gr.Tabs() as tabs:
            with gr.Tab(t("tab_data"), id="data", elem_id="tab-data", render_children=True) as data_tab:
                d = data.build()
            with gr.Tab(t("tab_train"), id="train", elem_id="tab-train", render_children=True) as train_tab:
                tr = train.build()
            with gr.Tab(t("tab_merge"), id="merge", elem_id="tab-merge", render_children=True) as merge_tab:
                m = merge.build()
            with gr.Tab(t("tab_chat"), id="chat", elem_id="tab-chat", render_children=True) as chat_tab:
                c = chat.build()
            with gr.Tab(t("tab_runs"), id="runs", elem_id="tab-runs", render_children=True) as runs_tab:
                r = runs.build()
            with gr.Tab(t("tab_models"), id="models", elem_id="tab-models", render_children=True) as models_tab:
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
        # Runs tab buttons open the selected run elsewhere; with none selected they say so and stay.
        r["to_train"].click(open_train, r["selected"], [tr["viewed"], tabs, r["pick_note"]], api_name=False)
        r["to_merge"].click(open_merge, r["selected"], [m["run"], tabs, r["pick_note"]], api_name=False)
        r["to_chat"].click(open_chat, r["selected"], [c["source_a"], c["source_b"], tabs, r["pick_note"]],
                           api_name=False)
        demo.load(_reattach, None, [tr["viewed"], tr["data"], m["run"], r["frame"], c["source_a"], c["source_b"]],
                  api_name="reattach")
        demo.load(data.titles, None, d["hist"], api_name=False)
        demo.load(models.reattach, None, [mo["note"], mo["progress"], mo["log"], mo["timer"]],
                  api_name=False)
        # The language: the saved choice (or the browser's) on load; a switch redraws what the server wrote.
        # Each tab's build() gives its `relabel` (fn, inputs, outputs): its server-made text in the chosen language.
        demo.load(None, None, switch, js=LOAD_JS, api_name=False)
        demo.unload(chat.forget)  # a page closed: what the chat held for it goes
        switched = switch.input(None, switch, None, js=SWITCH_JS, api_name=False)
        every_tab = [data_tab, train_tab, merge_tab, chat_tab, runs_tab, models_tab]
        labels = (lambda: [gr.Tab(label=t(k)) for k in TABS], None, every_tab)
        for fn, inputs, outputs in (labels, d["relabel"], tr["relabel"], m["relabel"], c["relabel"], r["relabel"],
                                    mo["relabel"]):
            switched.then(fn, inputs, outputs, api_name=False, show_progress="hidden")
        # gradio's upload box words ("Drop File Here") are set when it is drawn: draw it again.
        switched.then(lambda: gr.update(visible=False), None, d["file"], api_name=False, show_progress="hidden").then(
            lambda: gr.update(visible=True), None, d["file"], api_name=False, show_progress="hidden")
        for fn, inputs, outputs in (d["relabel"], c["relabel"]):
            demo.load(fn, inputs, outputs, api_name=False, show_progress="hidden")
    return demo


# The Runs tab's buttons: the run selected in its table opened in another tab (and the line under the buttons
# cleared), or, with no run selected, that line asks for one and the page stays on the Runs tab.
def open_train(run: str):
    if not run:
        return gr.update(), gr.update(), runs.pick_first()
    return gr.update(choices=train.run_choices(), value=run), gr.Tabs(selected="train"), ""


def open_merge(run: str, request: gr.Request = None):
    if not run:
        return gr.update(), gr.update(), runs.pick_first()
    return gr.update(choices=merge.finished_runs(request), value=run), gr.Tabs(selected="merge"), ""


def open_chat(run: str, request: gr.Request = None):
    if not run:
        return gr.update(), gr.update(), gr.update(), runs.pick_first()
    choices = chat.sources(lang(request))
    return (gr.update(choices=choices, value=chat.ADAPTER + str(Path(run) / "adapter")),
            gr.update(choices=[("—", "")] + choices, value="default"), gr.Tabs(selected="chat"), "")


def launch_kwargs() -> dict:
    """Arguments for demo.launch(): translations, stylesheet, a quiet footer (the language is the header's switch)."""
    kw = dict(i18n=I18N, footer_links=["api"])
    if CSS.is_file():
        kw["css_paths"] = [CSS]
    return kw
