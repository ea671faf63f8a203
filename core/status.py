"""A job's status.json: its fields, the one atomic writer, reading it, and why a job ended, in words.

Training and merging report through here; the panel, the command line and the tests read
through here. Torch-free, so the panel can import it.

    state      starting → running → (stopping →) finished | stopped | failed
    pid        the job's process, so a reader can tell a vanished job from a live one
    step, max_steps, started, ended, device, mode, adapter     (training)
    elapsed_before   seconds a resumed run trained in its earlier sessions (its clock goes on from there)
    progress (0 to 1), message, report                         (a merge: its stage, then its result)
    bytes_done, bytes_total, speed (bytes/s), eta (seconds)    (a download, with progress and message)
    error      what went wrong, one line;   hint   what to do about it
    error_zh, hint_zh   the same in Chinese (written by update() from a core.errors.Text); pick with said()
    warning, warning_zh   something worth knowing while it still runs (a diverging loss), and in Chinese

A stop request is a file beside it (STOP), not a field: the job rewrites status.json as it
goes, and a field written by the panel would be lost in the next rewrite.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

from core import logs
from core.errors import Text

FILE = "status.json"
STOP = "stop"
FINAL = ("finished", "stopped", "failed")
LIVE = ("starting", "running", "stopping")
FIELDS = {"state": "starting", "pid": None, "started": None, "ended": None, "step": 0, "max_steps": 0,
          "device": None, "mode": None, "error": None, "hint": None, "error_zh": None, "hint_zh": None,
          "warning": None, "warning_zh": None, "adapter": None, "elapsed_before": None,
          "progress": None, "message": None, "message_zh": None, "report": None,
          "bytes_done": None, "bytes_total": None, "speed": None, "eta": None}

OOM_HINT = Text("lower batch size or max sequence length, or turn on gradient checkpointing",
                "请调小 batch size 或 max sequence length，或打开梯度检查点")
OOM_HINTS = {
    "train": OOM_HINT,
    "merge": Text("free the GPU (unload chat models, wait for training to end), then merge again",
                  "请先腾出 GPU（卸载对话模型，或等训练结束），再重新合并"),
    "chat": Text("unload the other model, wait for training to end, or choose a smaller model",
                 "请卸载另一个模型、等训练结束，或换个更小的模型"),
    "download": Text("close other programs, then start the download again", "请关闭其他程序，然后重新开始下载"),
}
LOG_HINT = Text("look at the end of the log for the reason", "原因请看日志末尾")
RESUME_HINT = Text("press Resume to continue from the last checkpoint", "点“继续”即可从最后一个检查点接着训练")
FIX_HINT = Text("fix the setting named above, then start again", "请改正上面提到的设置，然后重新开始")
DISK_HINT = Text("free some disk space, then press Resume: the last checkpoint is kept",
                 "请腾出磁盘空间，然后点“继续”：最后一个检查点已保留")


# ---- files -----------------------------------------------------------------------------------
def read_json(path: str | Path) -> dict:
    """A JSON object file as a dict; {} if missing, damaged, or caught half-written."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: str | Path, data: dict) -> None:
    """Write-then-rename: a reader never sees half a file, and a failed write leaves the old one."""
    path = Path(path)
    # One temporary name per writer thread: two threads of one process never share it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid) -> bool:
    """True while process `pid` runs (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


# ---- the writer ------------------------------------------------------------------------------
class Status:
    """A job's own status.json: every change merged in and written whole."""

    def __init__(self, folder: str | Path | None, **fields):
        """`folder` None: a job nobody watches (a merge run by hand): the status is kept, not written."""
        self.path = Path(folder) / FILE if folder is not None else None
        self.data = {**FIELDS, "pid": os.getpid(), "started": time.time()}
        self.update(**fields)

    def update(self, **changes) -> None:
        """Merge `changes` and write them (an OSError, a full disk say, is the caller's to handle)."""
        self.data.update(bilingual(changes))
        if self.path is not None:
            write_json(self.path, self.data)

    def last_word(self, log, **changes) -> None:
        """A final state, written even on a struggling disk: one retry, and a failure is logged, never raised.

        Raising here would hide the error that ended the job; a reader that finds a dead pid in a
        live state reports the job as ended anyway.
        """
        for attempt in (1, 2):
            try:
                self.update(**changes)
                return
            except OSError as e:
                log.error("could not write %s (attempt %d of 2): %s", FILE, attempt, e)


def reporting(folder: Path, work, log, kind: str, log_name: str):
    """Run `work(progress)` as a job reporting in `folder`/status.json; returns (the Status, work's result).

    `folder` is where the panel keeps the job's status and log (run by hand, without it, the job
    only prints). `progress(fraction, text)` prints a line and records it (status.json, and the job's story in both
    languages for the page: core.logs.STORY); a failure is written as the job's last word, in words, and raised again.
    """
    job = Status(folder if Path(folder).is_dir() else None)
    story = Path(folder) / logs.STORY if job.path is not None else None

    def tell(text: str, level: str = "INFO", before: str = "") -> None:
        if story is not None:
            chinese = getattr(text, "zh", None)
            try:
                logs.tell(story, before + str(text), chinese and before + chinese, level)
            except OSError:  # the story is for the page; status.json and the log still say it
                pass

    def progress(fraction: float, text: str) -> None:
        share = f"[{fraction:4.0%}] "
        print(f"{share}{text}", flush=True)
        job.update(state="running", progress=round(fraction, 3), message=text)
        tell(text, before=share)

    try:
        return job, work(progress)
    except BaseException as e:
        error, hint = explain(e, kind)
        if hint:
            hint = Text(hint.replace("train.log", log_name), getattr(hint, "zh", hint).replace("train.log", log_name))
        job.last_word(log, state="failed", error=error, hint=hint or None,
                      ended=time.time())
        tell(error, "ERROR")
        raise


# ---- reading ---------------------------------------------------------------------------------
def read(folder: str | Path, log: str | Path | None = None, kind: str = "train") -> dict:
    """A job's status; one whose process vanished without a final word is shown as failed (or stopped).

    `kind` ("train", "merge", "download") picks the words of the hint for such a job.
    """
    folder = Path(folder)
    status = {**FIELDS, "state": "unknown", **read_json(folder / FILE)}
    if status["state"] in LIVE and status.get("pid") and not pid_alive(status["pid"]):
        # Gone without a final word (the supervisor writes the same a moment later, or never if
        # the panel was closed meanwhile).
        stopping = stop_requested(folder)
        error, hint = ended(None, log or folder / "train.log", stopping, kind=kind)
        fresh = bilingual({"error": error, "hint": hint})
        for key in ("error", "hint"):  # a word the job wrote itself wins
            if not status.get(key):
                status[key], status[key + "_zh"] = fresh[key], fresh[key + "_zh"]
        status["state"] = "stopped" if stopping else "failed"
    return status


def elapsed(status: dict, now: float | None = None) -> float | None:
    """Seconds a job has run (a resumed run: with its earlier sessions), to its end or to `now`; None before it started."""
    if not status.get("started"):
        return None
    return (status.get("elapsed_before") or 0) + (status.get("ended") or now or time.time()) - status["started"]


def spent(folder: str | Path) -> float:
    """Seconds a run has trained in all its sessions so far: where the clock of a resume starts.

    A session whose process vanished without its end written counts to the last time it wrote its status.
    """
    path = Path(folder) / FILE
    status = read_json(path)
    end = status.get("ended")
    if end is None and status.get("state") in ("running", "stopping"):
        try:
            end = path.stat().st_mtime
        except OSError:
            end = None
    if end is None or not status.get("started"):
        return status.get("elapsed_before") or 0
    return elapsed(status, end)


def bilingual(changes: dict) -> dict:
    """`error`, `hint`, a job's progress `message` and a run's `warning` with their Chinese beside them (error_zh,
    ...), where they carry it (a core.errors.Text)."""
    for key in ("error", "hint", "message", "warning"):
        if key in changes:
            value = changes[key]
            changes = {**changes, key + "_zh": getattr(value, "zh", None) if value else None}
    return changes


def words(status: dict, language: str | None) -> tuple[str | None, str | None]:
    """A status's (error, hint) in `language` ("zh" or "en"), English where it has no Chinese."""
    zh = language == "zh"
    return ((zh and status.get("error_zh")) or status.get("error"),
            (zh and status.get("hint_zh")) or status.get("hint"))


def request_stop(folder: str | Path) -> None:
    """Leave a stop request for the job in `folder` (it reads it between steps and while starting)."""
    (Path(folder) / STOP).write_text(f"{time.time()}\n", encoding="utf-8")


def stop_requested(folder: str | Path) -> bool:
    return (Path(folder) / STOP).exists()


def clear_stop(folder: str | Path) -> None:
    (Path(folder) / STOP).unlink(missing_ok=True)


# ---- why it ended ----------------------------------------------------------------------------
def explain(exc: BaseException, job: str = "train") -> tuple[str, str | None]:
    """(error, hint) for an exception that ended a job ("train", "merge" or "chat"), in words."""
    from core import errors
    from core.errors import UserError

    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text:
        # torch says how much it asked for and how much was free: worth keeping, in one line.
        wanted = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", text)
        free = re.search(r"of which ([\d.]+ [KMGT]?i?B) is free", text)
        detail = ", ".join(x for x in (wanted and f"needed {wanted[1]} more", free and f"{free[1]} free") if x)
        detail_zh = "，".join(x for x in (wanted and f"还需 {wanted[1]}", free and f"剩余 {free[1]}") if x)
        return Text("out of GPU memory" + (f" ({detail})" if detail else ""),
                    "显存不足" + (f"（{detail_zh}）" if detail_zh else "")), OOM_HINTS[job]
    if isinstance(exc, MemoryError):
        return Text("out of system memory", "内存不足"), Text(
            "close other programs, or lower batch size or max sequence length",
            "请关闭其他程序，或调小 batch size 或 max sequence length")
    if isinstance(exc, UserError):
        return errors.of(exc), Text(exc.hint, exc.hint_zh) if exc.hint else None
    if isinstance(exc, OSError) and exc.errno in (28, 27):  # ENOSPC, EFBIG
        where = exc.filename or "writing"
        return Text(f"disk full: {exc.strerror} ({where})", f"磁盘已满：{exc.strerror}（{where}）"), DISK_HINT
    first = (text.strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}".rstrip(": "), Text("see train.log", "请查看 train.log")


def ended(code: int | None, log: str | Path | None = None, stopping: bool = False,
          out_of_memory: bool = False, kind: str = "train") -> tuple[str | None, str | None]:
    """(error, hint) for a job ("train" or "merge") that ended without writing a final state."""
    again = RESUME_HINT if kind == "train" else Text("start it again", "请重新开始")
    if stopping and kind == "download":
        return None, Text("start the same download again to continue where it stopped", "再次开始同一个下载即可从中断处继续")
    if stopping:  # asked to stop before it could say so itself (still starting, say)
        return None, Text("stopped before training began: nothing was trained, so there is nothing to keep",
                          "在训练开始前就停止了：什么都没训练，所以没有可保留的内容")
    said = last_error(log) if log else None
    if code is not None and code > 0 and said:
        return said, FIX_HINT if said.startswith(("model:", "data:", "out:", "resume:")) else LOG_HINT
    if code is None:
        return said or Text("the job ended without saying why (the machine restarted or the process was killed)",
                            "任务没有说明原因就结束了（机器重启了，或进程被终止了）"), again
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGKILL and out_of_memory:
            train = kind == "train"
            return (Text(f"killed by signal {sig} ({name}): the system ran out of memory",
                         f"被信号 {sig}（{name}）终止：系统内存不足"),
                    Text("close other programs" + (", lower batch size or max sequence length, then press Resume"
                                                   if train else ", then start it again"),
                         "请关闭其他程序" + ("，调小 batch size 或 max sequence length，然后点“继续”"
                                             if train else "，然后重新开始")))
        if sig == signal.SIGSEGV:
            return (Text(f"crashed (signal {sig}, {name})", f"崩溃了（信号 {sig}，{name}）"),
                    Text("look at the end of the log; updating the GPU driver or bitsandbytes often helps",
                         "请查看日志末尾；更新 GPU 驱动或 bitsandbytes 通常有帮助"))
        return Text(f"killed by signal {sig} ({name})", f"被信号 {sig}（{name}）终止"), again
    return Text(f"ended with exit code {code}", f"以退出码 {code} 结束"), LOG_HINT


def last_error(log: str | Path) -> str | None:
    """The one-line 'error: ...' a core command prints for a UserError, or the last exception line."""
    from core.runs import log_tail

    lines = [line.strip() for line in log_tail(log, 200).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    for line in reversed(lines):
        if "Error:" in line or "Exception:" in line:
            return line[:300]
    return None


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer ended in this cgroup so far (None if it won't say)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None
