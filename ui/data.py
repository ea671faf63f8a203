"""Data tab: a file in, a preview of the exact training text, statistics, a saved dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import pandas as pd

from core import errors, models, paths, readers
from core.config import PrepareConfig
from core.errors import UserError
from ui.forms import warn, widget
from ui.i18n import help, lang, say, t

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "identity.jsonl"  # teaches a new name: the clearest proof of a first run
SUFFIXES = (".jsonl", ".json", ".csv")


def files() -> list[str]:
    """Data files the panel offers: uploads in the workspace, then the bundled sample."""
    found = []
    if paths.uploads().is_dir():
        found += sorted((str(p) for p in paths.uploads().iterdir() if p.suffix.lower() in SUFFIXES), reverse=True)
    if SAMPLE.is_file():
        found.append(str(SAMPLE))
    return found


def upload(file: str | None):
    """Keep an uploaded file in the workspace's data folder and select it."""
    if not file:
        return gr.update()
    src = Path(file)
    paths.uploads().mkdir(parents=True, exist_ok=True)
    # The same file uploaded again is the same upload; another file of that name gets a new one.
    dest = paths.unique(paths.uploads() / src.name, reuse=lambda p: p.read_bytes() == src.read_bytes(),
                        file=True)
    shutil.copyfile(src, dest)
    return gr.update(choices=files(), value=str(dest))


def config(source, sample, seed, template, eval_ratio, max_seq_length, model, skip_bad, name) -> PrepareConfig:
    """The tab's widgets as one PrepareConfig (the only place that conversion happens)."""
    # Requests name files and folders: only the workspace, the sample and allowed folders are read,
    # and a dataset name becomes a folder inside the workspace's datasets, nowhere else.
    out = str(paths.child(paths.datasets(), name, "dataset name")) if name and name.strip() else ""
    source = str(paths.readable(source, "data file")) if source else ""
    return PrepareConfig.from_dict(dict(
        input=source, out=out, sample=sample, seed=seed, template=template or "auto",
        eval_ratio=eval_ratio, max_seq_length=max_seq_length, model=paths.model_spec(model), skip_bad=bool(skip_bad),
    ))


def preview(request: gr.Request, *values):
    """Detected layout and the first rows rendered with the template; a broken row anywhere is named."""
    from core import data

    language = lang(request)
    empty = _empty_preview(language)
    if not values[0]:
        return say("no_file", language), empty
    try:
        cfg = config(*values)
        layout = data.detect(cfg.input)
        rows = data.preview(cfg, n=5)
        _check_rows(cfg)
    except UserError as e:
        return _named(e, values[0], language), empty
    table = pd.DataFrame([[r["prompt"], r["response"]] for r in rows],
                         columns=[say("col_prompt", language), say("col_response", language)])
    shown = f"**{say('layout_' + layout, language)}** · `{Path(cfg.input).name}`"
    if rows:
        shown += "  \n" + say("template_" + rows[0]["template_why"], language, template=rows[0]["template"])
    return shown, table


CHECK_ROWS = 200_000  # rows read when a file is chosen: a broken row shows then, not at Save (a few seconds at most)


def _check_rows(cfg: PrepareConfig) -> None:
    """Raise the first broken row of the file (unless broken rows are skipped); the preview reads only five."""
    if cfg.skip_bad:
        return
    for i, (_, _, row) in enumerate(readers.rows(Path(cfg.input), cfg.format)):
        if isinstance(row, readers.BadRow):
            raise row
        if i >= CHECK_ROWS:
            return


def _named(e: UserError, source: str, language: str) -> str:
    """The problem as the page shows it, naming the file by its name: the workspace's folders are no business of the reader."""
    text = errors.text(e, language)
    for path in {str(source), str(Path(source).resolve())}:
        text = text.replace(path, Path(source).name)
    hint = "  \n" + say("skip_hint", language) if isinstance(e, readers.BadRow) else ""
    return warn(text) + hint


def choose(request: gr.Request, *values):
    """A file chosen: its preview (or its first problem), and the previous dataset's statistics cleared."""
    return (*preview(request, *values), "", _no_bars(), "")


def _no_bars() -> pd.DataFrame:
    return pd.DataFrame({"tokens": pd.Series(dtype="string"), "rows": pd.Series(dtype="int64")})


def save(request: gr.Request, *values, progress=gr.Progress()):
    """Prepare the dataset; report counts, dropped rows, token lengths and the histogram."""
    from core import data

    language = lang(request)
    if not values[0]:
        return say("no_file", language), _no_bars(), gr.update(), ""
    try:
        # prepare() reports the share of the file read: a big file shows a moving bar, not a spinner.
        manifest = data.prepare(config(*values), progress=lambda share: progress(share, desc=say("reading", language)))
    except UserError as e:
        return _named(e, values[0], language), _no_bars(), gr.update(), ""
    return _stats_text(manifest, language), _histogram(manifest), manifest["path"], manifest["path"]


def _stats_text(m: dict, language: str) -> str:
    c, s = m["counts"], m["stats"]
    tok = s.get("tokens", {})
    lines = [say("saved", language, name=Path(m["path"]).name, train=c.get("train", 0), eval=c.get("eval", 0)), "",
             say("counts", language, **{k: c.get(k, 0) for k in ("read", "usable", "kept")})]
    if c.get("dropped_total"):
        named = readers.reason_zh if language == "zh" else str
        why = say("list_sep", language).join(f"{named(r)}: {n}" for r, n in c.get("dropped", {}).items())
        lines.append(say("dropped", language, n=c["dropped_total"], why=why))
    if tok:
        lines.append(say("tokens_per_row", language, mean=tok["mean"], p50=tok["p50"], p95=tok["p95"], max=tok["max"]))
    lines.append(say("cut", language, max=m["max_seq_length"], rows=s["cut_rows"], share=f"{s['cut_share']:.1%}"))
    return "\n\n".join(lines)


def _histogram(m: dict) -> pd.DataFrame:
    """The bins as labels (the chart draws numbers as thin bars), data only.

    An update that also set the chart's sort or titles rebuilt the chart, and the browser applies
    an update's properties one at a time, the data last: the data could go to the chart being
    replaced, and the new one showed the previous dataset (or the new bars in the old order). So
    the chart's settings never change (sort="x", titles set on page load by `titles`) and a save
    sends only rows. Labels are padded with spaces (which the chart does not draw) so that sorting
    them as text sorts them as numbers.
    """
    h = m["stats"].get("histogram") or {}
    starts = [str(x) for x in h.get("starts", [])]
    width = max(map(len, starts), default=0)
    return pd.DataFrame({"tokens": [s.rjust(width) for s in starts], "rows": h.get("counts", [])})


def titles(request: gr.Request = None):
    """The histogram's axis titles in the reader's language (on page load, before any data)."""
    language = lang(request)
    return gr.update(x_title=say("hist_tokens", language), y_title=say("hist_rows", language))


def relabel(request: gr.Request, *values):
    """The tab's server-made text again, in the language now chosen: preview, statistics shown, chart titles."""
    from core import data

    *values, shown = values
    language = lang(request)
    layout, table = preview(request, *values) if values[0] else (gr.update(), _empty_preview(language))
    manifest = data.read_manifest(shown) if shown else {}
    stats = _stats_text({**manifest, "path": shown}, language) if manifest else gr.update()
    return layout, table, stats, titles(request)


def _empty_preview(language: str) -> pd.DataFrame:
    return pd.DataFrame(columns=[say("col_prompt", language), say("col_response", language)])


def use_sample():
    return gr.update(choices=files(), value=str(SAMPLE))


def build() -> dict:
    """The Data tab's widgets; the layout wires `dataset` (the saved folder) to the Train tab."""
    gr.Markdown(t("data_intro"))
    with gr.Row():
        with gr.Column(scale=1):
            file = gr.File(label=t("upload"), file_types=list(SUFFIXES), type="filepath", height=120)
            source = gr.Dropdown(files(), value=None, label=t("source"), allow_custom_value=True)
            sample_btn = gr.Button(t("use_sample"), size="sm")
            sample = widget(PrepareConfig, "sample")
            seed = widget(PrepareConfig, "seed")
            template = widget(PrepareConfig, "template", options=["auto", "seed", "chat"])
            eval_ratio = widget(PrepareConfig, "eval_ratio")
            with gr.Accordion(t("advanced"), open=False):
                max_len = widget(PrepareConfig, "max_seq_length")
                model = gr.Dropdown(models.available(), value="default", label=t("base_model"), info=help(PrepareConfig, "model"),
                                    allow_custom_value=True)
                skip_bad = widget(PrepareConfig, "skip_bad")
                name = gr.Textbox("", label=t("dataset_name"))
        with gr.Column(scale=2):
            layout = gr.Markdown(label=t("layout"))
            table = gr.Dataframe(headers=["", ""], label=t("preview"), wrap=True, max_height=360,
                                 interactive=False, column_widths=["60%", "40%"])
            preview_btn = gr.Button(t("preview_btn"), size="sm")
            save_btn = gr.Button(t("save_dataset"), variant="primary")
            stats = gr.Markdown()
            hist = gr.BarPlot(x="tokens", y="rows", label=t("histogram"), height=220, sort="x")
            dataset = gr.Textbox(visible=False)
            stats_of = gr.State("")  # the dataset whose statistics are shown ("" when none are)
    inputs = [source, sample, seed, template, eval_ratio, max_len, model, skip_bad, name]
    file.upload(upload, file, source, api_name="upload")
    sample_btn.click(use_sample, None, source, api_name=False)
    source.change(choose, inputs, [layout, table, stats, hist, stats_of], api_name=False, concurrency_id="data",
                  concurrency_limit=1)
    template.change(preview, inputs, [layout, table], api_name=False, concurrency_id="data", concurrency_limit=1)
    preview_btn.click(preview, inputs, [layout, table], api_name="preview", concurrency_id="data", concurrency_limit=1)
    save_btn.click(save, inputs, [stats, hist, dataset, stats_of], api_name="prepare", concurrency_id="data",
                   concurrency_limit=1)
    return {"source": source, "dataset": dataset, "file": file, "hist": hist,
            "relabel": (relabel, [*inputs, stats_of], [layout, table, stats, hist])}
