"""Reading run folders: status, metrics and a one-line summary of every run; who trains a run.

The training child writes RUN/status.json, RUN/metrics.jsonl and RUN/train.log; everything
here only reads them, so the panel, the command line and tests all see the same thing.
The one exception is RUN/.lock: the trainer holds an OS lock on it for as long as it lives
(`lock`), so anyone can ask whether a run is being trained (`locked`), and a killed trainer
can never leave a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import IO

from core import paths
from core.errors import UserError

FINAL = ("finished", "stopped", "failed")
LIVE = ("starting", "running", "stopping")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # Missing, or caught half-written by the child: the next poll will see it whole.
        return {}


def _pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    try:  # a zombie (our own child not yet reaped) is gone for every practical purpose
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def read_status(run: str | Path) -> dict:
    """RUN/status.json, with a run whose process vanished without a final word shown as failed."""
    status = {"state": "unknown", "step": 0, "max_steps": 0, "error": None, "hint": None, "adapter": None}
    status.update(_read_json(Path(run) / "status.json"))
    if status["state"] in LIVE and status.get("pid") and not _pid_alive(status["pid"]):
        # Gone without a final word; its own last error line is the best cause (the supervisor
        # writes the same into status.json a moment later, or never if the panel was closed).
        cause = last_error(Path(run) / "train.log")
        status["state"] = "failed"
        status["error"] = status.get("error") or cause or \
            "the training process is gone without saying why (the machine restarted or the process was killed)"
        status["hint"] = status.get("hint") or ("fix the setting named above, then start again" if cause else
                                                "press Resume to continue from the last checkpoint")
    return status


def last_error(log: str | Path) -> str | None:
    """The one-line 'error: ...' a core command prints for a UserError, or the last exception line."""
    lines = [line.strip() for line in log_tail(log, 200).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    for line in reversed(lines):
        if "Error:" in line or "Exception:" in line:
            return line[:300]
    return None


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
    cfg = _read_json(run / "config.json")
    status = read_status(run)
    metrics = read_metrics(run)
    adapter = run / "adapter"
    created = status.get("started") or (run.stat().st_mtime if run.exists() else None)
    return {
        "folder": str(run),
        "name": run.name,
        "state": status["state"],
        "step": status.get("step") or (metrics[-1].get("step", 0) if metrics else 0),
        "max_steps": status.get("max_steps") or cfg.get("max_steps", 0),
        "model": cfg.get("model", ""),
        "data": Path(cfg.get("data", "")).name,
        "preset": cfg.get("preset", ""),
        "r": cfg.get("lora_r"),
        "lr": cfg.get("learning_rate"),
        "steps": cfg.get("max_steps"),
        "batch": cfg.get("batch_size"),
        "final_loss": final_loss(metrics),
        "created": created,
        "error": status.get("error"),
        "hint": status.get("hint"),
        "adapter": str(adapter) if (adapter / "adapter_config.json").is_file() else None,
    }


def list_runs() -> list[dict]:
    """A summary of every run folder in the workspace, newest first."""
    root = paths.runs()
    if not root.is_dir():
        return []
    found = [summary(p) for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    return sorted(found, key=lambda s: s["created"] or 0, reverse=True)


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
                        field="out")
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
