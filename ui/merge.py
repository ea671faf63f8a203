"""Merge tab: a finished run's adapter folded into its base model, in a child process; then a merged
model exported to GGUF (llama.cpp, Ollama, LM Studio) with an Ollama Modelfile."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from core import export as exporting
from core import fit, jobs, models, paths, runs, status
from core.config import ExportConfig, MergeConfig
from core.errors import UserError
from ui import fit as fit_words
from ui.forms import warn, widget
from ui.i18n import both, help, lang, say, t


def finished_runs(request: gr.Request = None) -> list[tuple[str, str]]:
    """Runs that have an adapter to merge, newest first, with their state in the reader's language."""
    language = lang(request)
    return [(f"{r['name']} · {say('state_' + r['state'], language)}", r["folder"]) for r in runs.list_runs() if r["adapter"]]


def refresh(request: gr.Request = None):
    """Fresh choices for the run picker (a run finished meanwhile)."""
    return gr.update(choices=finished_runs(request))


def pick(run: str | None):
    """Fill the base model from the adapter's qlora_studio.json and propose an output folder."""
    if not run:
        return gr.update(), gr.update()
    try:
        run = paths.inside(run, paths.runs(), "run")
    except UserError:
        return gr.update(value=""), gr.update(value="")
    meta = models.read_record(run / "adapter")
    out = paths.unique(paths.merged() / run.name)
    return gr.update(value=meta.get("base_model", "")), gr.update(value=out.name)


def config(run, base, out, dtype, base_weights="original") -> MergeConfig:
    """The tab's widgets as one MergeConfig: the run from runs/, the output a name inside merged/."""
    adapter = str(paths.inside(run, paths.runs(), "run") / "adapter") if run else ""
    return MergeConfig.from_dict(dict(adapter=adapter, base=paths.model_spec(base, "base") if base and base.strip() else "",
                                      out=str(paths.child(paths.merged(), out, "output name")) if out else "",
                                      dtype=dtype, base_weights=base_weights or "original"))


def fit_badge(request: gr.Request | None, run, base, dtype) -> str:
    """Whether merging the chosen run fits the machine's free memory, before Merge is pressed."""
    if not run:
        return ""
    language = lang(request)
    try:
        cfg = config(run, base, "", dtype)
        _, trained_on = models.check_adapter(cfg.adapter)
        found = fit.check_merge(cfg.adapter, models.resolve(cfg.base or trained_on, fetch=False), cfg.dtype)
    except (UserError, OSError, ValueError):
        return ""  # Merge shows what is wrong when pressed
    how = say("fit_merge_exact", language) if found["why"] is None else say("fit_merge_peft", language, why=found["why"])
    return fit_words.badge(found, language, note=how)


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def result_text(folder: str | Path) -> str:
    """Where the model is, its size, and whether it answers like base + adapter (from the job's status), in both languages."""
    now = status.read(folder)
    report = now.get("report") or {}
    if not report.get("path"):
        cause = now.get("error")
        return both("merge_failed", cause=lambda language: status.words(now, language)[0]) if cause \
            else both("merge_failed_log")
    lines = [both("merged", out=report["path"], size=_size(report.get("size_bytes") or 0))]
    if report.get("max_abs_diff") is not None:
        key = "merge_check_ok" if report.get("ok") else "merge_check_failed"
        lines.append(both(key, diff=f"{report['max_abs_diff']:.2e}", agree=f"{report.get('top1_agreement') or 0:.0%}"))
    elif report.get("compared") is False:  # too large to hold twice here: every tensor was checked as written
        lines.append(both("merge_check_tensors"))
    if report.get("seconds") is not None:
        lines.append(f"{report.get('dtype', '')} · {str(report.get('device', '')).replace('cpu', 'CPU')} · {report['seconds']} s")
    return "\n\n".join(lines)


def _stage(now: dict, language: str) -> str:
    """A job's stage and share done, as it reports them in its status, in the reader's language where it gave it."""
    message = (language == "zh" and now.get("message_zh")) or now.get("message")
    return f"\n\n**{now['progress']:.0%} · {message}**" if message else ""


def progress_text(folder: str | Path, language: str) -> str:
    """The merge's stage and share done, as the job reports it in its status."""
    return say("merge_running", language) + _stage(status.read(folder), language)


def merge(request: gr.Request | None, run, base, out, dtype, base_weights="original"):
    """Start the merge child and report as it goes; the last update is the result."""
    language = lang(request)
    try:
        job = jobs.start_merge(config(run, base, out, dtype, base_weights))
    except UserError as e:
        yield warn(e, language=language), ""
        return
    yield from follow(job, lambda: progress_text(job.folder, language), lambda: result_text(job.folder), language)


# ---- export ----------------------------------------------------------------------------------
def merged_models() -> list[str]:
    """The merged model folders of the workspace, newest first (names inside workspace/merged)."""
    found = [p for p in paths.folders(paths.merged()) if list(p.glob("*.safetensors"))]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def refresh_models(picked: str = ""):
    """Fresh choices for the export's model picker (a merge finished meanwhile); `picked`, the model just merged,
    is chosen once it exists."""
    names = merged_models()
    return gr.update(choices=names, **({"value": picked} if picked in names else {}))


def export_config(model, out, quant) -> ExportConfig:
    """The export widgets as one ExportConfig: the model a folder in merged/, the output one in exports/."""
    folder = str(paths.child(paths.merged(), model, "model")) if model else ""
    if model and not out:
        out = paths.unique(paths.exports() / model).name
    return ExportConfig.from_dict(dict(model=folder, quant=quant,
                                       out=str(paths.child(paths.exports(), out, "output name")) if out else ""))


def export_result_text(folder: str | Path, language: str) -> str:
    """The files written with their sizes, the Modelfile, and any step that could not be done, in words."""
    now = status.read(folder)
    report = now.get("report") or {}
    if not report.get("path"):
        return say("export_failed", language, cause=status.words(now, language)[0] or say("see_log", language))
    lines = [say("exported", language, out=report["path"])]
    lines += [f"- `{Path(f['path']).name}` · {f['kind'].upper()} · {_size(f['bytes'])}" for f in report.get("files", [])]
    lines.append(say("export_modelfile", language, path=report.get("modelfile", "")))
    if report.get("instead"):  # Q4_0 written because llama-quantize is missing
        lines.append(warn(say("export_q4_0_instead", language)))
    elif report.get("skipped"):  # an export made before Q4_0 could be written here
        lines.append(warn(say("export_no_quantizer", language)))
    files = report.get("files") or [{"path": "model.gguf"}]
    name = "".join(c if c.isalnum() or c in "-._" else "-" for c in Path(report["path"]).name.lower())
    lines.append(say("export_howto", language, out=report["path"], name=name, file=Path(files[-1]["path"]).name))
    return "\n\n".join(lines)


def export_progress_text(folder: str | Path, language: str) -> str:
    return say("export_running", language) + _stage(status.read(folder), language)


def export(request: gr.Request | None, model, out, quant):
    """Start the export child and report as it goes; a model the converter cannot take is refused in words."""
    language = lang(request)
    try:
        cfg = export_config(model, out, quant)
        cfg.check()
        why = exporting.unsupported(cfg.model)
        if why:
            yield warn(say("export_unsupported", language, why=why)), ""
            return
        job = jobs.start_export(cfg)
    except UserError as e:
        yield warn(e, language=language), ""
        return
    yield from follow(job, lambda: export_progress_text(job.folder, language),
                       lambda: export_result_text(job.folder, language), language)


def build() -> dict:
    """The Merge tab's widgets."""
    gr.Markdown(t("merge_intro"))
    with gr.Row():
        with gr.Column():
            run = gr.Dropdown(finished_runs(), label=t("run"), allow_custom_value=True)
            base = gr.Textbox(label=t("base"), info=help(MergeConfig, "base"))
            out = gr.Textbox(label=t("out"))
            dtype = widget(MergeConfig, "dtype")
            base_weights = widget(MergeConfig, "base_weights")
            fit_badge_html = gr.HTML(elem_id="fit-merge")  # does the merge fit the free memory, before Merge
            go = gr.Button(t("merge_btn"), variant="primary")
        with gr.Column():
            result = gr.Markdown(label=t("merge_result"))
            log = gr.Textbox(label=t("merge_log"), lines=10, interactive=False)
    run.change(pick, run, [base, out], api_name="pick_run")
    merging = go.click(merge, [run, base, out, dtype, base_weights], [result, log], api_name="merge",
                       concurrency_id="gpu", concurrency_limit=1)
    for trigger in (run, base, dtype):
        trigger.change(fit_badge, [run, base, dtype], fit_badge_html, api_name=False, show_progress="hidden")
    gr.Timer(5.0).tick(fit_badge, [run, base, dtype], fit_badge_html, api_name=False, show_progress="hidden")
    gr.Markdown(t("export_intro"))
    with gr.Row():
        with gr.Column():
            model = gr.Dropdown(merged_models(), label=t("export_model"), allow_custom_value=True)
            target = gr.Textbox(label=t("export_out"))
            quant = widget(ExportConfig, "quant")
            start = gr.Button(t("export_btn"), variant="primary")
        with gr.Column():
            exported = gr.Markdown()
            export_log = gr.Textbox(label=t("export_log"), lines=8, interactive=False)
    start.click(export, [model, target, quant], [exported, export_log], api_name="export", concurrency_id="gpu",
                concurrency_limit=1)
    merging.then(refresh_models, out, model, api_name=False)
    return {"run": run, "model": model, "relabel": (refresh, None, run)}


def follow(job, progress, result, language: str):
    """(text, log) about once a second while the job runs, then the result. The log is the job's own lines in the
    reader's language (its story), or the tail of its output where it has none yet."""
    def log() -> str:
        return runs.story(job.folder, 12, language) or job.log_tail(12)

    while job.alive():
        yield progress(), log()
        time.sleep(1.0)
    yield result(), log()
