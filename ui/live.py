"""The live view of a training run: progress, the loss chart, what the run learned, and the machine.

The Train tab shows it beside the form and polls it with a timer; it reads only the run's folder
(status.json, metrics.jsonl, learned.json) and the monitor, so a reload or a restarted panel shows
the same run.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import gradio as gr
import pandas as pd

from core import jobs, paths, runs, status
from core.errors import UserError
from ui.i18n import lang, say
from ui.i18n import state as words


def shown_run(viewed: str | None = None) -> str:
    """The run to show: the chosen one, else the one running, else the newest."""
    if viewed:
        try:  # a request may name any path: only run folders of this workspace are shown
            return str(paths.inside(viewed, paths.runs(), "run"))
        except UserError:
            pass
    job = jobs.current()
    if job is not None and job.kind == "train":
        return job.folder
    listed = runs.list_runs()
    return listed[0]["folder"] if listed else ""


def _clock(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_html(run: str, language: str = "en", metrics: list[dict] | None = None) -> str:
    """Step x / y with a bar, elapsed and remaining time, tokens per second, and any failure in words."""
    if not run:
        return f"<p>{say('state_unknown', language)}</p>"
    now = status.read(run)
    metrics = runs.read_metrics(run) if metrics is None else metrics
    last = metrics[-1] if metrics else {}
    state = now["state"]
    step = now.get("step") or last.get("step", 0)
    total = now.get("max_steps") or last.get("max_steps") or runs.read_config(run).get("max_steps", 0)
    pct = 100 * step / total if total else 0
    # The wall clock since start, so it keeps moving between logging steps; a resumed run's goes on from the time
    # it trained before.
    elapsed = status.elapsed(now) if now.get("started") else last.get("elapsed")
    remaining = _clock(last.get("remaining")) if state in status.LIVE else "–"
    parts = [f"<div class='qs-progress'><span class='qs-state qs-{state}'>{words(state, now.get('adapter'), language)}</span> "
             f"<b>{escape(Path(run).name)}</b>",
             f"<div class='qs-bar'><div style='width:{pct:.1f}%'></div></div>",
             say("progress_line", language, step=step, total=total or "?", elapsed=_clock(elapsed), remaining=remaining,
                 speed=f"{last.get('tokens_per_second', 0) or 0:.0f}")]
    if last.get("loss") is not None:
        parts.append(f" · <span>{say('chart_loss', language)} {last['loss']:.4f}</span>")
    if now.get("mode"):  # what the engine chose: 4-bit QLoRA on a GPU, or plain LoRA without one
        where = (now.get("device") or "").removeprefix("cuda:0 ").replace("cpu", "CPU")
        mode = now["mode"]
        for phrase in ("phrase_no_gpu", "phrase_compute"):  # the engine's words for it, in the reader's language
            mode = mode.replace(say(phrase), say(phrase, language))
        parts.append(f"<p class='qs-mode'>{escape(mode)}{' · ' + escape(where) if where else ''}</p>")
    if now.get("warning"):  # the run goes on, but something needs the user's eye (the loss rising, an older checkpoint)
        warning = (language == "zh" and now.get("warning_zh")) or now["warning"]
        parts.append(f"<p class='qs-warning'>⚠ {escape(warning)}</p>")
    if state == "failed":
        error, hint = status.words(now, language)
        parts.append(f"<p class='qs-error'>{escape(error or '')}</p>")
        if hint:
            parts.append(f"<p>👉 {escape(hint)}</p>")
    if state in ("finished", "stopped") and now.get("adapter"):
        parts.append(f"<p>{say('adapter_saved', language, path=escape(now['adapter']))}</p>")
    if state == "finished":
        parts.append(learned_html(run, language))
    return "".join(parts) + "</div>"


def learned_html(run: str, language: str = "en") -> str:
    """After a run: the eval loss of the base and the tuned model, a plain verdict, and unseen questions answered by both."""
    from core import learned

    found = learned.read(run)
    if not found:
        data = runs.read_config(run).get("data")
        return "" if data and (Path(data) / "eval.jsonl").is_file() else f"<p class='qs-learned'>{say('learned_none', language)}</p>"
    parts = [f"<div class='qs-learned'><b>{say('learned_title', language)}</b> ",
             say("learned_loss", language, rows=found.get("eval_rows", 0), before=_loss(found.get("eval_loss_before")),
                 after=_loss(found.get("eval_loss_after")))]
    verdict = found.get("verdict", "unknown")
    if verdict in ("better", "same", "worse"):
        parts.append(f"<p class='qs-verdict qs-{verdict}'>{say('learned_' + verdict, language)}</p>")
    samples = found.get("samples") or []
    if samples:
        head = "".join(f"<th>{say(k, language)}</th>" for k in ("learned_question", "learned_expected", "learned_base",
                                                                 "learned_tuned"))
        rows = "".join("<tr>" + "".join(f"<td>{escape(str(s.get(k, '')))}</td>" for k in ("question", "expected", "base",
                                                                                        "tuned")) + "</tr>"
                       for s in samples)
        parts.append(f"<table class='qs-answers'><tr>{head}</tr>{rows}</table>")
    return "".join(parts) + "</div>"


def _loss(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def series(language: str) -> tuple[str, str]:
    """The loss chart's two curves, training and eval, named in `language`."""
    return say("series_train", language), say("series_eval", language)


PALETTE = ("#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d")
"""The charts' colours, in the order curves get them."""
# Each curve of the loss chart keeps its colour in both languages.
COLORS = {name: color for language in ("en", "zh") for name, color in zip(series(language), PALETTE, strict=False)}


MIN_SPAN = 40  # steps the x axis spans at least: vega puts a tick about every 40 px, so over fewer steps they fall between steps (1.1, 1.2, ...)
DASH = 80  # a curve of one point is drawn as a dash of 1/DASH of the x axis (8 px of a 640 px chart)


def span(steps) -> int:
    """How many steps a loss chart's x axis spans: the run's (or the longest curve's) length, and at least MIN_SPAN, so
    that its ticks fall on whole steps."""
    return max(max(steps, default=0) or 0, MIN_SPAN)


def with_lone_points_drawn(rows: list[dict], width: float) -> list[dict]:
    """`rows` ({"step", "loss", "series"}), a curve of one point drawn as a short level dash ending at it.

    The chart draws lines, not dots: a curve of one point (the first logged step of a run that logs every 10 steps,
    a run of one step, an eval at the end only) was not drawn at all, and the chart stood empty.
    """
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["series"]] = counts.get(r["series"], 0) + 1
    dashes = [{**r, "step": r["step"] - width} for r in rows if counts[r["series"]] == 1]
    return dashes + rows


def loss_frame(run: str, metrics: list[dict] | None = None, language: str = "en", total: int = 0) -> pd.DataFrame:
    """Training and eval loss against step, from the start of the run (`total`: its length in steps, where known)."""
    if metrics is None:
        metrics = runs.read_metrics(run) if run else []
    train, evaluation = series(language)
    rows = []
    for m in metrics:
        if m.get("loss") is not None:
            rows.append({"step": m.get("step", 0), "loss": m["loss"], "series": train})
        if m.get("eval_loss") is not None:
            rows.append({"step": m.get("step", 0), "loss": m["eval_loss"], "series": evaluation})
    rows = with_lone_points_drawn(rows, span([total, *(r["step"] for r in rows)]) / DASH)
    # The chart colours only the curves named when its drawing was last set up, and may draw new points with
    # that older set-up: a page in Chinese, set up with the English names, drew no line. So every name of both
    # languages is always present, an empty point (no loss) holding the place of each without points; the
    # legend lists only the reader's (chart).
    first = rows[0]["step"] if rows else 1
    for name in COLORS:
        if not any(r["series"] == name for r in rows):
            rows.append({"step": first, "loss": float("nan"), "series": name})
    return pd.DataFrame(rows).astype({"step": steps_type(rows), "loss": "float64", "series": "string"})


def steps_type(rows: list[dict]) -> str:
    """Whole steps as integers; a dash's start (with_lone_points_drawn) needs a float."""
    return "int64" if all(float(r["step"]).is_integer() for r in rows) else "float64"


def chart(run: str, metrics: list[dict], language: str):
    """The loss chart's data over the run's whole length, with titles in the reader's language."""
    last = metrics[-1] if metrics else {}
    total = last.get("max_steps") or (runs.read_config(run).get("max_steps") if run else 0) or last.get("step", 0)
    return gr.update(value=loss_frame(run, metrics, language, total or 0), x_title=say("chart_step", language),
                     y_title=say("chart_loss", language), color_title=say("chart_series", language),
                     colors_in_legend=list(series(language)), x_lim=[0, span([total or 0])])


def gpu_markdown(request: gr.Request = None) -> str:
    """Utilisation, memory, temperature and power of each GPU, then CPU and RAM."""
    language = lang(request)
    try:
        from core import monitor

        snap = monitor.snapshot()
    except Exception as e:  # the monitor must never take the panel down
        return say("monitor_unavailable", language, why=escape(str(e)))
    lines = []
    for g in snap.get("gpus", []):
        lines.append(f"**GPU {g['index']} · {g['name']}** — {g.get('util_percent', 0):.0f}% · "
                     f"{g.get('memory_used_gb', 0):.1f} / {g.get('memory_total_gb', 0):.1f} GB · "
                     f"{g.get('temperature_c') or '–'} °C · {g.get('power_w') or '–'} W")
    if not snap.get("gpus"):
        lines.append(f"_{say('no_gpu_found', language)}_")
    lines.append(f"CPU {snap.get('cpu_percent', 0):.0f}% · RAM {snap.get('ram_used_gb', 0):.1f} / {snap.get('ram_total_gb', 0):.1f} GB")
    return "  \n".join(lines)


def poll(viewed, request: gr.Request = None):
    """Everything the live view shows, for the shown run."""
    run = shown_run(viewed)
    metrics = runs.read_metrics(run) if run else []  # once a tick, for both views
    language = lang(request)
    return progress_html(run, language, metrics), chart(run, metrics, language), runs.story(run, 8, language) if run else ""


