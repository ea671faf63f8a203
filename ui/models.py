"""Models tab: the local models with what each one is and whether it fits, and a download from a hub id
(a model, or a sample of a dataset for the Data tab)."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import pandas as pd

from core import jobs, library, paths, status
from core.config import DownloadConfig
from core.errors import UserError
from ui.forms import warn, widget
from ui.i18n import lang, say, t

COLUMNS = ["name", "architecture", "parameters", "size", "chat_template", "train_fit", "chat_fit", "where", "path"]


def size(nbytes: float | None) -> str:
    """Bytes in words: 1.5 GB, 230.4 MB."""
    if nbytes is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def count(n: int | None) -> str:
    """A parameter count in words: 135M, 7.6B."""
    if not n:
        return ""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def table(request: gr.Request = None) -> pd.DataFrame:
    """Every local model as a row, in the reader's language."""
    language = lang(request)
    rows = []
    for e in library.listing(library.gpu_free()):
        no_gpu = say("no_gpu_here", language)
        row = {"name": e["name"], "architecture": e["architecture"], "parameters": count(e["parameters"]),
               "size": size(e["size_bytes"]), "chat_template": say("has_yes" if e["chat_template"] else "has_no", language),
               "train_fit": no_gpu if e["train_fit"] is None else say("fits_yes" if e["train_fit"] else "fits_no", language),
               "chat_fit": no_gpu if e["chat_fit"] is None else (
                   say("fit_bits", language, bits=e["chat_fit"][:-3]) if e["chat_fit"] else say("fits_no", language)),
               "where": say("where_" + e["where"], language), "path": e["path"]}
        if e["problem"]:
            row["architecture"] = (say("not_converted", language) if e["problem"] == "not converted yet"
                                   else say("unreadable", language, why=e["problem"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS).set_axis([say("col_m_" + c, language) for c in COLUMNS], axis=1)


def gpu_note(request: gr.Request = None) -> str:
    language = lang(request)
    free = library.gpu_free()
    return say("models_no_gpu", language) if free is None else say("models_gpu", language, free=size(free))


def config(repo, source, endpoint, name, allow_bin, kind="model", rows=1000) -> DownloadConfig:
    """The form as one DownloadConfig: a model's folder is a name inside workspace/models, a dataset's
    sample a file in the uploads (data/), where the Data tab finds it."""
    repo = (repo or "").strip()
    rows = int(rows or 0)
    # Named after the hub id only when it is one: else the id's own problem is the one to say, not its name's.
    name = (name or "").strip() or (repo.split("/")[-1] + (f"-{rows}" if kind == "dataset" else "")
                                    if paths.HUB_ID.fullmatch(repo) else "")
    if name and kind == "dataset":
        out = str(paths.child(paths.uploads(), name if name.endswith(".jsonl") else f"{name}.jsonl", "name"))
    else:
        out = str(paths.child(paths.models(), name, "name")) if name else ""
    return DownloadConfig.from_dict(dict(repo=repo, kind=kind, source=source, endpoint=(endpoint or "").strip(),
                                         out=out, allow_bin=bool(allow_bin), rows=rows))


def shown() -> Path | None:
    """The download to show: the running one, else the most recent one in workspace/models."""
    job = jobs.current(jobs.DOWNLOAD)
    if job is not None and job.kind == "download":
        return Path(job.folder)
    folders = [p for root in (paths.models(), paths.uploads()) for p in root.glob(".*.job") if (p / status.FILE).is_file()]
    return max(folders, key=lambda p: (p / status.FILE).stat().st_mtime) if folders else None


def _left(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def progress_html(folder: Path | None, language: str) -> str:
    """A progress bar with the size, the speed and the time left, or how the download ended."""
    if folder is None:
        return say("dl_none", language)
    now = status.read(folder, folder / "download.log", kind="download")
    report = now.get("report") or {}
    repo = html.escape(report.get("repo") or (now.get("message") or "").split(" ")[0] or folder.name)
    done, total = now.get("bytes_done") or 0, now.get("bytes_total") or 0
    numbers = dict(repo=repo, done=size(done), total=size(total))
    bar = f'<progress value="{done}" max="{total or 1}" style="width:100%"></progress>'
    state = now["state"]
    if folder.parent.resolve() == paths.uploads().resolve():  # a dataset's sample goes among the data files
        return _dataset_html(now, repo, language)
    if state == "finished":
        return bar + "<p>" + say("dl_finished", language, repo=repo, path=html.escape(report.get("path", "")),
                                 total=size(total)) + "</p>"
    if state == "stopped":
        return bar + "<p>" + say("dl_stopped", language, **numbers) + "</p>"
    if state == "failed":
        error, hint = status.words(now, language)
        text = say("dl_failed", language, repo=repo, error=error or say("see_log", language))
        return warn(text) + (f"<br>{html.escape(hint)}" if hint else "")
    if not total:
        return "<p>" + say("dl_starting", language, repo=repo) + "</p>"
    if not now.get("speed"):
        return bar + "<p>" + say("dl_running_early", language, **numbers) + "</p>"
    return bar + "<p>" + say("dl_running", language, speed=size(now["speed"]), left=_left(now.get("eta")),
                             **numbers) + "</p>"


def _dataset_html(now: dict, repo: str, language: str) -> str:
    """A dataset being sampled: the share of the rows kept so far, then where the data file is."""
    report, state = now.get("report") or {}, now["state"]
    bar = f'<progress value="{now.get("progress") or 0}" max="1" style="width:100%"></progress>'
    if state == "finished":
        return bar + "<p>" + say("dl_dataset_finished", language, repo=repo, rows=report.get("rows", 0),
                                 path=html.escape(report.get("path", ""))) + "</p>"
    if state == "failed":
        return warn(say("dl_failed", language, repo=repo, error=status.words(now, language)[0] or say("see_log", language)))
    if state == "stopped":
        return "<p>" + say("dl_dataset_stopped", language, repo=repo) + "</p>"
    return bar + "<p>" + say("dl_dataset_running", language, repo=repo, share=f"{now.get('progress') or 0:.0%}") + "</p>"


def poll(seen: str, request: gr.Request = None):
    """Every second while a download is shown: its progress and log; the list once it has finished."""
    language = lang(request)
    folder = shown()
    state = status.read(folder)["state"] if folder else ""
    log = log_text(folder)
    live = state in status.LIVE
    fresh = table(request) if state == "finished" and seen != "finished" else gr.update()
    return progress_html(folder, language), log, fresh, state, gr.Timer(active=live)


def log_text(folder: Path | None) -> str:
    """The download's last lines as its log box shows them: without the JSON report printed for a terminal at the
    end (the progress above the box says how it ended, in the reader's language)."""
    from core import runs

    if not folder:
        return ""
    lines = runs.log_tail(folder / "download.log", 13).splitlines()
    return "\n".join(line for line in lines if not line.startswith("{"))


def start(repo, source, endpoint, name, allow_bin, kind="model", rows=1000, request: gr.Request = None):
    """Validate the form and start the download child; a problem is shown in one line."""
    language = lang(request)
    try:
        cfg = config(repo, source, endpoint, name, allow_bin, kind, rows)
        job = jobs.start_download(cfg)
    except UserError as e:
        return warn(e, language=language), gr.Timer(active=False)
    return progress_html(Path(job.folder), language), gr.Timer(active=True)


def stop(request: gr.Request = None):
    language = lang(request)
    job = jobs.current(jobs.DOWNLOAD)
    if job is None or job.kind != "download":
        return say("dl_nothing", language)
    jobs.stop(job, grace=10)
    return say("dl_stopping", language)


def reattach(request: gr.Request = None):
    """On page load: the GPU note and the download's progress (polled while it runs).

    The list is filled when the tab is opened: a table filled while its tab is hidden can stay blank.
    """
    folder = shown()
    live = bool(folder) and status.read(folder)["state"] in status.LIVE
    return gpu_note(request), progress_html(folder, lang(request)), log_text(folder), gr.Timer(active=live)


def relabel(request: gr.Request = None):
    """The tab's server-made text again, in the language now chosen: the list, the GPU note, the download."""
    return table(request), gpu_note(request), progress_html(shown(), lang(request))


def build() -> dict:
    """The Models tab's widgets."""
    gr.Markdown(t("models_intro"))
    note = gr.Markdown()
    frame = gr.Dataframe(interactive=False, wrap=False, max_height=360, label=t("models_table"), elem_id="models-table")
    refresh = gr.Button(t("models_refresh"), size="sm")
    gr.Markdown(t("download_heading"))
    with gr.Row():
        with gr.Column():
            kind = widget(DownloadConfig, "kind")
            repo = widget(DownloadConfig, "repo", placeholder="Qwen/Qwen2.5-0.5B-Instruct")
            source = widget(DownloadConfig, "source")
            endpoint = widget(DownloadConfig, "endpoint", placeholder="https://hf-mirror.com")
            name = gr.Textbox(label=t("download_name"))
            allow_bin = widget(DownloadConfig, "allow_bin")
            rows = widget(DownloadConfig, "rows")
            with gr.Row():
                go = gr.Button(t("download_btn"), variant="primary")
                halt = gr.Button(t("download_stop"), variant="stop")
        with gr.Column():
            progress = gr.HTML(label=t("download_progress"), elem_id="download-progress")
            log = gr.Textbox(label=t("download_log"), lines=8, interactive=False)
    seen = gr.State("")
    timer = gr.Timer(1.0, active=False)
    refresh.click(table, None, frame, api_name="models")
    go.click(start, [repo, source, endpoint, name, allow_bin, kind, rows], [progress, timer], api_name="download")
    halt.click(stop, None, progress, api_name="stop_download")
    timer.tick(poll, seen, [progress, log, frame, seen, timer], api_name=False)
    return {"frame": frame, "note": note, "progress": progress, "log": log, "timer": timer,
            "relabel": (relabel, None, [frame, note, progress])}

