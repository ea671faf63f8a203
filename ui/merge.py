"""Merge tab: a finished run's adapter folded into its base model, in a child process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr

from core import jobs, models, paths, runs, status
from core.config import MergeConfig
from core.errors import UserError
from ui.forms import warn, widget
from ui.i18n import help, lang, say, t


def finished_runs() -> list[tuple[str, str]]:
    """Runs that have an adapter to merge, newest first."""
    return [(f"{r['name']} · {r['state']}", r["folder"]) for r in runs.list_runs() if r["adapter"]]


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


def config(run, base, out, dtype) -> MergeConfig:
    """The tab's widgets as one MergeConfig: the run from runs/, the output a name inside merged/."""
    adapter = str(paths.inside(run, paths.runs(), "run") / "adapter") if run else ""
    return MergeConfig.from_dict(dict(adapter=adapter, base=paths.model_spec(base, "base") if base and base.strip() else "",
                                      out=str(paths.child(paths.merged(), out, "output name")) if out else "",
                                      dtype=dtype))


def _report(job: jobs.Job) -> dict:
    """The JSON report the merge command prints last (or what the output folder shows)."""
    for line in reversed(runs.log_tail(job.log, 50).splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


def result_text(job: jobs.Job, language: str) -> str:
    """Where the model is, its size, and whether it answers like base + adapter."""
    out = Path(job.folder)
    if not (out / "config.json").is_file():
        cause = status.last_error(job.log) or say("see_log", language)
        return say("merge_failed", language, cause=cause)
    report = _report(job)
    size = report.get("size_bytes") or sum(p.stat().st_size for p in out.glob("*.safetensors"))
    lines = [say("merged", language, out=out, size=_size(size))]
    if report.get("max_abs_diff") is not None:
        key = "merge_check_ok" if report.get("ok") else "merge_check_failed"
        lines.append(say(key, language, diff=f"{report['max_abs_diff']:.2e}",
                         agree=f"{report.get('top1_agreement') or 0:.0%}"))
    if report.get("seconds") is not None:
        lines.append(f"{report.get('dtype', '')} · {report.get('device', '')} · {report['seconds']} s")
    return "\n\n".join(lines)


def merge(request: gr.Request | None, run, base, out, dtype):
    """Start the merge child and report as it goes; the last update is the result."""
    language = lang(request)
    try:
        job = jobs.start_merge(config(run, base, out, dtype))
    except UserError as e:
        yield warn(e), ""
        return
    while job.alive():
        tail = job.log_tail(12)
        step = [line for line in tail.splitlines() if line.startswith("[")]
        yield say("merge_running", language) + (f"\n\n**{step[-1]}**" if step else ""), tail
        time.sleep(1.0)
    yield result_text(job, language), job.log_tail(12)


def build() -> dict:
    """The Merge tab's widgets."""
    gr.Markdown(t("merge_intro"))
    with gr.Row():
        with gr.Column():
            run = gr.Dropdown(finished_runs(), label=t("run"), allow_custom_value=True)
            base = gr.Textbox(label=t("base"), info=help(MergeConfig, "base"))
            out = gr.Textbox(label=t("out"))
            dtype = widget(MergeConfig, "dtype")
            go = gr.Button(t("merge_btn"), variant="primary")
        with gr.Column():
            result = gr.Markdown(label=t("merge_result"))
            log = gr.Textbox(label=t("log"), lines=10, interactive=False)
    run.change(pick, run, [base, out], api_name="pick_run")
    go.click(merge, [run, base, out, dtype], [result, log], api_name="merge", concurrency_id="gpu", concurrency_limit=1)
    return {"run": run}
