"""Reading run folders: config, metrics, logs and a one-line summary of every run; who trains a run.

The training child writes RUN/config.json (the settings asked for), RUN/used.json (the settings the machine
decides, as the run applied them: a CPU trains without 4-bit loading, in float32), RUN/metrics.jsonl and
RUN/train.log (and its status.json through core.status); everything here only reads them, so the panel, the command
line and tests all see the same thing. The one exception is RUN/.lock: the trainer holds an OS
lock on it for as long as it lives (`lock`), so anyone can ask whether a run is being trained
(`locked`), and a killed trainer can never leave a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import IO

from core import learned, paths, status
from core.config import on_cpu
from core.errors import UserError
from core.logs import STORY


def read_config(run: str | Path) -> dict:
    """RUN/config.json as a dict ({} if missing or damaged)."""
    return status.read_json(Path(run) / "config.json")


USED = "used.json"


def settings_used(run: str | Path) -> dict:
    """The settings a run trained with: config.json with what RUN/used.json says the machine made of it.

    A run started before used.json was written: on a CPU (its status.json says so), what a CPU makes of its config;
    elsewhere its config as asked for.
    """
    cfg = read_config(run)
    used = status.read_json(Path(run) / USED)
    if not used and status.read_json(Path(run) / status.FILE).get("device") == "cpu":
        used = on_cpu(cfg.get("compute_dtype", ""))
    return {**cfg, **used}


def read_metrics(run: str | Path) -> list[dict]:
    """Every metrics line of RUN/metrics.jsonl; a partly written last line is skipped."""
    out = []
    try:
        lines = (Path(run) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def final_loss(metrics: list[dict]) -> float | None:
    """The last training loss logged, or None before the first logging step."""
    for row in reversed(metrics):
        if row.get("loss") is not None:
            return row["loss"]
    return None


def summary(run: str | Path) -> dict:
    """What the runs list shows for one run: state, model, data, key settings, final loss."""
    run = Path(run)
    cfg = read_config(run)
    state = status.read(run)
    metrics = read_metrics(run)
    adapter = run / "adapter"
    created = state.get("started") or (run.stat().st_mtime if run.exists() else None)
    return {
        "folder": str(run),
        "name": run.name,
        "state": state["state"],
        "step": state.get("step") or (metrics[-1].get("step", 0) if metrics else 0),
        "max_steps": state.get("max_steps") or cfg.get("max_steps", 0),
        "model": cfg.get("model", ""),
        "data": Path(cfg.get("data", "")).name,
        "preset": cfg.get("preset", ""),
        "r": cfg.get("lora_r"),
        "lr": cfg.get("learning_rate"),
        "steps": cfg.get("max_steps"),
        "batch": cfg.get("batch_size"),
        "final_loss": final_loss(metrics),
        "created": created,
        "error": state.get("error"),
        "hint": state.get("hint"),
        "adapter": str(adapter) if (adapter / "adapter_config.json").is_file() else None,
        "device": state.get("device"),
        "tokens_per_second": next((m["tokens_per_second"] for m in reversed(metrics) if m.get("tokens_per_second")), None),
        "learned": learned.read(run),
    }


def list_runs() -> list[dict]:
    """A summary of every run folder in the workspace, newest first."""
    found = [summary(p) for p in paths.folders(paths.runs()) if (p / "config.json").is_file()]
    return sorted(found, key=lambda s: s["created"] or 0, reverse=True)


def measured_speed(model: str, device: str, preset: str) -> tuple[str, float] | None:
    """(name, real tokens a second) of the newest finished run of this model and preset on this device, if any.

    `device` as status.json names it: "cpu", or the GPU's name ("NVIDIA H200").
    """
    for r in list_runs():
        seen = (r.get("device") or "").removeprefix("cuda:0 ")
        if (r["state"] == "finished" and r["tokens_per_second"] and seen == device and r["model"] == model
                and r["preset"] == preset):
            return r["name"], r["tokens_per_second"]
    return None


def log_tail(run: str | Path, n: int = 40, name: str = "train.log") -> str:
    """The last n lines of a run's log (or of any log file next to it)."""
    path = Path(run) / name if Path(run).is_dir() else Path(run)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # Progress bars redraw with carriage returns (or, without a terminal, on new lines):
    # keep only the last drawing of each bar.
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    bars = [_BAR.match(line) for line in lines]
    kept = [line for i, line in enumerate(lines)
            if not (bars[i] and i + 1 < len(lines) and bars[i + 1] and bars[i + 1].group(1) == bars[i].group(1))]
    return "\n".join(kept[-n:])


_BAR = re.compile(r"^(.*?):\s*\d+%\|")
LEVEL_ZH = {"WARNING": "警告", "ERROR": "错误"}
_OURS = re.compile(r"^\d{4}-\d\d-\d\d (\d\d:\d\d:\d\d) (INFO|WARNING|ERROR) (.*)$")


def story(run: str | Path, n: int = 8, language: str = "en") -> str:
    """The last n lines a run wrote for its reader ("12:01:07 step 3/3 loss=1.2"; in Chinese where `language` is
    "zh" and the line has it), from RUN/story.jsonl (core.logs.STORY): no progress bars, library notices or the
    final JSON; train.log keeps everything. A run from before that file: its own lines of train.log, in English."""
    told = log_tail(run, 400, STORY)
    if told:
        lines = []
        for raw in told.splitlines():
            try:
                line = json.loads(raw)
                text = (language == "zh" and line.get("zh")) or line["en"]
                level = line["level"]
            except (ValueError, KeyError, TypeError):  # a line cut short by a full disk: the others still read
                continue
            if level != "INFO":
                text = f"{LEVEL_ZH.get(level, level) if language == 'zh' else level}: {text}"
            lines.append(f"{line['time']} {text}")
        return "\n".join(lines[-n:])
    lines = []
    for line in log_tail(run, 400).splitlines():
        m = _OURS.match(line)
        if m:
            lines.append(f"{m[1]} {m[3]}" if m[2] == "INFO" else f"{m[1]} {m[2]}: {m[3]}")
    return "\n".join(lines[-n:])


# ---- who trains a run --------------------------------------------------------------------
def lock(run: str | Path) -> IO:
    """Hold RUN/.lock for this process (until the returned file is closed or the process ends), or refuse."""
    f = open(Path(run) / ".lock", "a+", encoding="utf-8")  # "a+": opening must not erase the holder's pid
    for _ in range(10):  # a moment's grace: `locked` takes the lock briefly to look
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.1)
    else:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        f.close()
        raise UserError(f"out: run {run} is being trained by another process (pid {pid}); wait for it or stop it",
                        field="out", zh=f"out：运行 {run} 正在被另一个进程（pid {pid}）训练；请等待它结束或停止它")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def locked(run: str | Path) -> bool:
    """Whether a live process is training RUN right now (it holds RUN/.lock)."""
    try:
        f = open(Path(run) / ".lock", "rb")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


# ---- comparing runs ----------------------------------------------------------------------------
def compare(folders: list[str | Path]) -> dict:
    """Several runs side by side: their losses by step, the settings they trained with, their "did it learn" numbers.

    {"curves": [{"run", "step", "loss", "series": "train"|"eval"}], "settings": {name: [value used per run]},
     "asked": {name: [value asked for per run], for the names where some run used another value},
     "differ": {names whose used values are not all equal}, "learned": [dict per run]}
    """
    folders = [Path(f) for f in folders]
    curves = []
    for run in folders:
        for m in read_metrics(run):
            for key, series in (("loss", "train"), ("eval_loss", "eval")):
                if m.get(key) is not None:
                    curves.append({"run": run.name, "step": m.get("step", 0), "loss": m[key], "series": series})
    configs = [read_config(run) for run in folders]
    used = [settings_used(run) for run in folders]
    names = list(dict.fromkeys(k for c in used for k in c if k not in ("out", "resume")))
    settings = {name: [u.get(name) for u in used] for name in names}
    asked = {name: [c.get(name) for c in configs] for name in names
             if any(c.get(name) != u.get(name) for c, u in zip(configs, used, strict=True))}
    differ = {name for name, values in settings.items() if len({json.dumps(v, sort_keys=True) for v in values}) > 1}
    return {"runs": [run.name for run in folders], "curves": curves, "settings": settings, "asked": asked,
            "differ": differ, "learned": [learned.read(run) for run in folders]}
