"""Train tab: every TrainConfig setting with its help, Start / Stop / Resume, and the live view (ui/live.py)."""

from __future__ import annotations

import os
from dataclasses import fields
from html import escape
from pathlib import Path

import gradio as gr

from core import fit, gpus, jobs, models, paths, runs, saving, status
from core.config import PRESETS, TrainConfig
from core.config import preset as preset_config
from core.errors import UserError
from ui import fit as fit_words
from ui import gpu_picker, live
from ui.forms import warn, widget
from ui.i18n import both, help, lang, say, t

HIDDEN = ("model", "data", "out", "preset", "resume")
BASIC = ("max_steps", "learning_rate", "batch_size", "grad_accum", "max_seq_length",
         "lora_r", "lora_alpha", "lora_dropout", "logging_steps", "save_steps")
PLACED = ("gpus",)  # next to the model, and only on a machine with several GPUs
ADVANCED = tuple(f.name for f in fields(TrainConfig) if f.name not in HIDDEN + BASIC + PLACED)
SETTINGS = BASIC + ADVANCED + PLACED
GPU_ONLY = ("quantization", "double_quant", "liger_kernels", "fp8_base", "offload_activations")


def config(model, data, preset, name, *values) -> TrainConfig:
    """The tab's widgets as one TrainConfig (the only place that conversion happens)."""
    out = str(paths.child(paths.runs(), name, "run name")) if name and name.strip() else ""
    data = str(paths.readable(data, "dataset")) if data else ""
    return TrainConfig.from_dict({**dict(zip(SETTINGS, values, strict=True)), "model": paths.model_spec(model),
                                  "data": data, "preset": preset, "out": out})


def on_cpu() -> bool:
    """Whether a run started here trains on the CPU (no GPU visible): the default preset is then sized for it."""
    return not gpus.visible()


def fill_preset(preset: str):
    """Choosing a preset puts all of its values into the form (the default one sized for a CPU where there is no GPU)."""
    chosen = preset_config(preset if preset in PRESETS else "default", cpu=on_cpu())
    return [gr.update(value=getattr(chosen, n)) for n in SETTINGS]


def datasets() -> list[tuple[str, str]]:
    from core import data

    return [(f"{d['name']} ({d['rows']})", d["path"]) for d in data.list_datasets()]


def model_choices() -> list[str]:
    """The models offered for training: the default, then every local model (a download just finished too)."""
    return models.available()


def run_choices() -> list[tuple[str, str]]:
    return [(r["name"], r["folder"]) for r in runs.list_runs()]  # no state here: it would go stale


PLAN = ("batch_size", "grad_accum", "max_seq_length", "packing", "max_steps", "epochs")


def gpu_choices(language: str = "en") -> list[tuple[str, str]]:
    """The GPU picker's choices: each GPU with its free memory, then all of them together."""
    return gpu_picker.choices("gpu_first", "gpu_all", language)


MANY_PASSES = 10


def plan_text(request: gr.Request | None, data, *values) -> str:
    """What the settings mean for the chosen dataset: updates, passes over it, tokens an update."""
    from core.plan import plan

    try:
        cfg = config(None, data, "default", "", *values)
    except UserError:
        return ""  # the form shows the problem when Start is pressed
    # A setting out of its range is said here at once, in the reader's language (the dataset and the run's name
    # are asked for when Start is pressed).
    if any(v is None for v in values):  # a number being typed again
        return ""
    problems = [p for p in cfg.validate() if p.split(":", 1)[0] not in ("data", "out")]
    if problems:
        return warn(*problems, language=lang(request))
    numbers = {k: getattr(cfg, k) for k in PLAN}
    if not data or min(cfg.batch_size, cfg.grad_accum, cfg.max_seq_length) < 1:
        return ""
    info = plan(data, **numbers)
    if info is None:
        return ""
    language = lang(request)
    text = say("plan", language, updates=f"{info['updates']:,}", passes=f"{info['passes']:g}",
               tokens=f"{info['tokens_per_update']:,}", rows=f"{info['rows_per_update']:g}")
    n = len(gpus.parse(cfg.gpus))
    if n > 1:  # data-parallel: the GPUs share each update
        from core.plan import share

        batch, accum, factor = share(cfg.batch_size, cfg.grad_accum, n)
        text += "  \n" + say("plan_gpus", language, n=n, batch=batch, accum=accum, rows=batch * accum * n)
        if factor != 1:
            text += " " + say("plan_gpus_lr", language, factor=f"{factor:.3g}")
    text += "  \n" + say("template_" + info["template_why"], language, template=info["template"])
    return text + ("  \n" + warn(say("plan_many", language)) if info["passes"] > MANY_PASSES else "")


_PARAMS: dict[str, int] = {}  # parameters of each model the estimate has looked at (read from its headers once)


def estimate_text(request: gr.Request | None, model, data, preset, *values) -> str:
    """About how long the run will take here, before Start: from an earlier run's measured speed, else a measured table."""
    from core import fit
    from core.plan import LONG_SECONDS, plan, seconds

    try:
        cfg = config(model, data, preset, "", *values)
        info = plan(data, **{k: getattr(cfg, k) for k in PLAN}) if data else None
        if cfg.model not in _PARAMS:  # the embedded default is converted once, for training anyway
            folder = models.embedded() if models.is_default(cfg.model) else models.resolve(cfg.model, fetch=False)
            _PARAMS[cfg.model] = fit.parameters(folder)[0]
    except (UserError, OSError, ValueError, TypeError):
        return ""
    if info is None or not _PARAMS[cfg.model]:  # a hub id not downloaded yet: its size is unknown
        return ""
    language = lang(request)
    device = "cpu" if on_cpu() else gpu_name()
    earlier = runs.measured_speed(cfg.model, device, cfg.preset)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    took = seconds(info["updates"] * info["tokens_per_update"], _PARAMS[cfg.model], device, cores,
                   earlier[1] if earlier else None)
    if took is None:
        return say("estimate_first_step", language)
    about = _duration(took, language)
    text = (say("estimate_run", language, time=about, run=escape(earlier[0])) if earlier
            else say("estimate_table", language, time=about,
                     device=say("device_cpu", language) if device == "cpu" else escape(device)))
    return text + ("  \n" + warn(say("estimate_long", language, time=about)) if took > LONG_SECONDS else "")


def gpu_name() -> str:
    """The first GPU's name as the monitor reads it ("NVIDIA H200"), or "" when it cannot be read."""
    from core import monitor

    try:
        found = monitor.snapshot().get("gpus") or []
    except Exception:  # noqa: BLE001 - no reading: no estimate from the table
        return ""
    return found[0].get("name", "") if found else ""


def _duration(took: float, language: str) -> str:
    minutes = max(1, round(took / 60))
    if minutes < 90:
        return say("minutes", language, n=minutes)
    return say("hours", language, n=f"{took / 3600:.1f}")
FIT = ("batch_size", "grad_accum", "max_seq_length", "lora_r", "target_modules", "quantization", "double_quant",
       "compute_dtype", "packing", "gradient_checkpointing", "liger_kernels", "offload_activations")
OUT_OF_MEMORY = ("out of GPU memory", "out of system memory", "ran out of memory")


def fit_badge(request: gr.Request | None, model, data, preset, *values) -> str:
    """Whether a run with these settings fits the machine's free memory (GPU, else RAM), before Start is pressed."""
    try:
        cfg = config(model, data, preset, "", *values)
        if any(getattr(cfg, n) is None for n in FIT) or min(cfg.batch_size, cfg.grad_accum, cfg.max_seq_length,
                                                            cfg.lora_r) < 1:
            return ""
        folder = models.resolve(cfg.model, fetch=False)
        have = fit.machine()
        found = fit.check_train(cfg, folder, have)
        changes = fit.remedies(cfg, folder, have) if found["verdict"] != "fits" else {}
    except UserError:
        return ""  # the form says what is wrong when Start is pressed
    return fit_words.badge(found, lang(request), changes)


def _retry_changes(run: str) -> tuple[TrainConfig, dict] | None:
    """The shown run's settings and the changes that should fit, when it failed for lack of memory."""
    if not run:
        return None
    now = status.read(run)
    if now["state"] != "failed" or not any(w in (now.get("error") or "") for w in OUT_OF_MEMORY):
        return None
    try:
        cfg = TrainConfig.from_dict(runs.read_config(run))
        return cfg, fit.retry_changes(cfg, models.resolve(cfg.model, fetch=False))
    except UserError:
        return None


def retry_offer(viewed, request: gr.Request = None):
    """After an out-of-memory failure: the button that retries with settings that fit, named by the changes."""
    found = _retry_changes(live.shown_run(viewed))
    if found is None:
        return gr.update(visible=False)
    language = lang(request)
    changes = found[1]
    text = say("retry_fit", language, changes=fit_words.changes_text(changes, language)) if changes else \
        say("retry_nothing", language)
    return gr.update(visible=True, value=text, interactive=bool(changes))


def retry(viewed, wandb_key, request: gr.Request = None):
    """Fill the form with the failed run's settings changed to fit, and start them as a new run."""
    language = lang(request)
    keep = [gr.update()] * len(SETTINGS)
    run = live.shown_run(viewed)
    found = _retry_changes(run)
    if not found or not found[1]:
        return say("retry_nothing", language), gr.update(), *keep
    cfg, changes = found
    new = cfg.replace(**changes, resume=False, out=str(paths.unique(paths.runs() / f"{Path(run).name}-fit")))
    try:
        env = {"WANDB_API_KEY": wandb_key.strip()} if wandb_key and wandb_key.strip() else None
        job = jobs.start_train(new, env=env)
    except UserError as e:
        return warn(e, language=language), gr.update(), *keep
    return (say("retried", language, run=Path(job.folder).name, changes=fit_words.changes_text(changes, language)),
            gr.update(choices=run_choices(), value=job.folder), *[gr.update(value=getattr(new, n)) for n in SETTINGS])


def start(request: gr.Request | None, model, data, preset, name, wandb_key, *values):
    """Validate the form and start the training child; problems are shown next to the form."""
    try:
        cfg = config(model, data, preset, name, *values)
        problems = cfg.replace(out=cfg.out or "auto").validate()
        if problems:
            return warn(*problems, language=lang(request)), gr.update()
        env = {"WANDB_API_KEY": wandb_key.strip()} if wandb_key and wandb_key.strip() else None
        job = jobs.start_train(cfg, env=env)
    except UserError as e:
        return warn(e, language=lang(request)), gr.update()
    return both("started", run=Path(job.folder).name), gr.update(choices=run_choices(), value=job.folder)


def stopping_run() -> str:
    """The folder of the job being stopped ("" when none), so that the word "stopping" can go once it has."""
    job = jobs.current()
    return job.folder if job is not None else ""


def stop_settled(folder: str):
    """Once the job Stop was pressed for has ended, its "will stop after the current step" goes (it stayed beside
    "stopped"); until then, and with nothing stopped, the line under the buttons is left alone."""
    if not folder or status.read(folder)["state"] in status.LIVE:
        return gr.update(), gr.update()
    return "", ""


def no_run_settled(viewed, line):
    """"No run selected" (Resume pressed with no run shown) goes once there is one: a run picked, or a training
    started (here, from another page or from a terminal); any other line under the buttons is left alone."""
    if line != both("no_run"):
        return gr.update()
    job = jobs.current()
    return "" if viewed or (job is not None and job.kind == "train") else gr.update()


def stop(request: gr.Request = None):
    """Ask the running job to stop after its current step."""
    job = jobs.stop()
    if job is None:
        return both("nothing_running")
    return both("stopping", run=Path(job.folder).name)


def resume(viewed, wandb_key, armed, request: gr.Request = None):
    """Continue the shown run from its last checkpoint, once the user has confirmed which run and checkpoint.

    The first press names the run and the checkpoint and arms Resume for that run (`armed`, the
    session's state); a second press while the same run is shown starts it.
    """
    if not viewed:
        return both("no_run"), gr.update(), ""
    try:
        run = paths.inside(viewed, paths.runs(), "run")
        checkpoint, _ = saving.newest_checkpoint(run)
        if armed != str(run) and checkpoint is not None and status.read(run)["state"] in ("stopped", "failed"):
            return both("resume_confirm", run=run.name, checkpoint=checkpoint.name), gr.update(), str(run)
        env = {"WANDB_API_KEY": wandb_key.strip()} if wandb_key and wandb_key.strip() else None
        job = jobs.resume(run, env=env)  # anything not resumable is refused here, with the reason
    except UserError as e:
        return warn(e, language=lang(request)), gr.update(), ""
    return both("resumed", run=Path(job.folder).name), gr.update(choices=run_choices(), value=job.folder), ""


def form_from_run(viewed):
    """The form as the shown run was started: model, dataset, preset and every setting from its config.json."""
    run = live.shown_run(viewed)
    cfg = runs.read_config(run) if run else {}
    if not cfg:
        return [gr.update()] * (3 + len(SETTINGS))
    keep = [gr.update(value=cfg[n]) if n in cfg else gr.update() for n in ("model", "data", "preset", *SETTINGS)]
    if cfg.get("data"):
        keep[1] = gr.update(choices=datasets(), value=cfg["data"])
    return keep


def relabel(request: gr.Request, viewed, model, data, preset, *values):
    """The tab's server-made text again, in the language now chosen: the plan, the time, the fit, the live view, the machine."""
    return (plan_text(request, data, *values), estimate_text(request, model, data, preset, *values),
            fit_badge(request, model, data, preset, *values), *live.poll(viewed, request), live.gpu_markdown(request))


def build() -> dict:
    """The Train tab's widgets."""
    gr.Markdown(t("train_intro"))
    # What actually runs is what the form shows: without a GPU, the default preset sized for the CPU.
    no_gpu = on_cpu()
    defaults = preset_config("default", cpu=no_gpu)
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                model = gr.Dropdown(model_choices(), value="default", label=t("base_model"), info=help(TrainConfig, "model"), allow_custom_value=True)
                data = gr.Dropdown(datasets(), label=t("prepared_dataset"), info=help(TrainConfig, "data"), allow_custom_value=True)
            widgets = {}
            # With several GPUs, which to train on (one, or several sharing each update).
            several = gpus.count() > 1
            widgets["gpus"] = widget(TrainConfig, "gpus", "", options=gpu_choices() if several else [("", "")],
                                     visible=several)
            with gr.Row():
                preset = gr.Radio(list(PRESETS), value="default", label=t("preset"), info=help(TrainConfig, "preset"))
                name = gr.Textbox("", label=t("run_name"))
            with gr.Group():
                with gr.Row():
                    for n in BASIC[:5]:
                        widgets[n] = widget(TrainConfig, n, getattr(defaults, n))
                with gr.Row():
                    for n in BASIC[5:]:
                        widgets[n] = widget(TrainConfig, n, getattr(defaults, n))
            plan = gr.Markdown()
            estimate = gr.Markdown(elem_id="train-estimate")  # how long the run will take here, before Start
            # Without a GPU, training is plain LoRA in float32: the GPU-only settings are shown, greyed out.
            with gr.Accordion(t("advanced"), open=False):
                gr.Markdown(t("no_gpu_note"), visible=no_gpu)
                # Two a row: four left checkboxes a character wide ("Doub quan", 双/重/量/化 one a line).
                for i in range(0, len(ADVANCED), 2):
                    with gr.Row(equal_height=True):
                        for n in ADVANCED[i:i + 2]:
                            widgets[n] = widget(TrainConfig, n, getattr(defaults, n), min_width=220,
                                                interactive=not (no_gpu and n in GPU_ONLY))
                wandb_key = gr.Textbox("", label=t("wandb_key"), type="password")
            problems = gr.Markdown()
            fit_badge_html = gr.HTML(elem_id="fit-train")  # does this run fit the free memory, before Start
            retry_btn = gr.Button(visible=False, variant="primary", elem_id="retry-fit")
            with gr.Row():
                start_btn = gr.Button(t("start"), variant="primary")
                stop_btn = gr.Button(t("stop"), variant="stop")
                resume_btn = gr.Button(t("resume"))
                armed = gr.State("")  # the run a first press of Resume named; a second press resumes it
        with gr.Column(scale=3):
            with gr.Row():
                viewed = gr.Dropdown(run_choices(), label=t("run_shown"), allow_custom_value=True, scale=4)
                refresh = gr.Button(t("refresh"), size="sm", scale=1)
            progress = gr.HTML(label=t("progress"))
            # The span from the start: the browser may draw a poll's points with the props it had before that poll
            # (measured: 1 page load in 3 drew steps 1-3 at ticks 1.0, 1.1, ... and kept them).
            plot = gr.LinePlot(live.loss_frame(""), x="step", y="loss", color="series", label=t("loss_chart"), height=280,
                               x_lim=[0, live.MIN_SPAN],
                               color_map=live.COLORS, colors_in_legend=list(live.series("en")))
            gpu = gr.Markdown(label=t("gpu"))
            log = gr.Textbox(label=t("log"), lines=8, max_lines=8, autoscroll=True, interactive=False)
    settings = [widgets[n] for n in SETTINGS]
    # Only a preset the user picks fills the form: one set from a run's config must keep the run's values.
    preset.input(fill_preset, preset, settings, api_name=False)
    for trigger in [data] + [widgets[n] for n in (*PLAN, "gpus")]:
        trigger.change(plan_text, [data, *settings], plan, api_name=False, show_progress="hidden")
    for trigger in [model, data, preset] + [widgets[n] for n in PLAN]:
        trigger.change(estimate_text, [model, data, preset, *settings], estimate, api_name=False,
                       show_progress="hidden")
    stopped = gr.State("")  # the folder of the run Stop was pressed for, until it has stopped
    start_btn.click(start, [model, data, preset, name, wandb_key, *settings], [problems, viewed], api_name="start").then(
        lambda: "", None, stopped, api_name=False)
    fit_inputs = [model, data, preset, *settings]
    for trigger in [model, preset] + [widgets[n] for n in FIT]:
        trigger.change(fit_badge, fit_inputs, fit_badge_html, api_name=False, show_progress="hidden")
    gr.Timer(5.0).tick(fit_badge, fit_inputs, fit_badge_html, api_name="fit", show_progress="hidden")
    retry_btn.click(retry, [viewed, wandb_key], [problems, viewed, *settings], api_name="retry_fit")
    stop_btn.click(stop, None, problems, api_name="stop").then(stopping_run, None, stopped, api_name=False)
    resume_btn.click(resume, [viewed, wandb_key, armed], [problems, viewed, armed], api_name="resume").then(
        lambda: "", None, stopped, api_name=False)
    refresh.click(lambda: gr.update(choices=run_choices()), None, viewed, api_name=False)
    view = [progress, plot, log]
    viewed.change(live.poll, viewed, view, api_name=False)
    # The form shows the run shown, when a run is picked or the page loads (which sets `viewed`), never on a tick.
    viewed.change(form_from_run, viewed, [model, data, preset, *settings], api_name="run_settings")
    ticker = gr.Timer(2.0)
    ticker.tick(live.poll, viewed, view, api_name="poll", show_progress="hidden")
    ticker.tick(retry_offer, viewed, retry_btn, api_name=False, show_progress="hidden")
    ticker.tick(stop_settled, stopped, [problems, stopped], api_name=False, show_progress="hidden")
    for event in (ticker.tick, viewed.change):
        event(no_run_settled, [viewed, problems], problems, api_name=False, show_progress="hidden")
    viewed.change(retry_offer, viewed, retry_btn, api_name=False, show_progress="hidden")
    gr.Timer(3.0).tick(live.gpu_markdown, None, gpu, api_name="gpu", show_progress="hidden")
    return {"model": model, "data": data, "viewed": viewed, "live": view, "problems": problems, "poll": live.poll,
            "relabel": (relabel, [viewed, model, data, preset, *settings], [plan, estimate, fit_badge_html, *view, gpu])}
