"""Where a command's log lines go, and keeping its output to its own lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
STORY = "story.jsonl"  # a job's own lines for its reader, in English and Chinese (core.runs.story reads it)


def zh(text: str) -> dict:
    """`extra=` for one of our log calls: the same line in Chinese, for the panel's reader (STORY)."""
    return {"zh": text}


class _Story(logging.Handler):
    """Our INFO-and-above lines, each as one JSON line with its Chinese: time, level, en, zh (None where a line has
    none: the reader gets the English). One short write a line, appended: a reader never sees half a line."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            chinese = getattr(record, "zh", None) or (getattr(record.msg, "zh", None) if not record.args else None)
            tell(self.path, record.getMessage(), chinese, record.levelname, record.created)
        except Exception:
            self.handleError(record)


def tell(path: Path, en: str, zh: str | None, level: str = "INFO", when: float | None = None) -> None:
    """One line of a job's story (STORY) in both languages: time, level, en, zh (None: the reader gets the English)."""
    line = {"time": time.strftime("%H:%M:%S", time.localtime(when)), "level": level, "en": en, "zh": zh}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")


def story_to(path: Path) -> logging.Handler:
    """Our lines also into `path` (STORY), in both languages; remove the handler when the job ends."""
    handler = _Story(path)
    logging.getLogger("qlora_studio").addHandler(handler)
    return handler


def to_file(path: Path) -> logging.Handler:
    """Our log lines to stdout and into `path` (once, when stdout already is that file: the supervisor's redirect).

    Tracebacks are logged at DEBUG: they reach the file, never a terminal.
    """
    root = logging.getLogger("qlora_studio")
    root.setLevel(logging.DEBUG)
    into_file = _same_file(sys.stdout, path)
    if not any(getattr(h, "qlora_studio_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(FORMAT)
        console.qlora_studio_console = True
        root.addHandler(console)
    for h in root.handlers:
        if getattr(h, "qlora_studio_console", False):
            h.setLevel(logging.DEBUG if into_file else logging.INFO)
    if into_file:
        handler: logging.Handler = logging.NullHandler()
    else:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(FORMAT)
    root.addHandler(handler)
    return handler


def rank_console(rank: int) -> logging.Handler:
    """The log of another rank of a data-parallel run: its warnings and errors alone, marked, on stderr.

    Rank 0 writes the run's log; under the panel every rank's output lands in train.log too, so the
    other ranks speak only when something is wrong with them.
    """
    root = logging.getLogger("qlora_studio")
    root.setLevel(logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s rank {rank}: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    return handler


def _same_file(stream, path: Path) -> bool:
    try:
        return path.exists() and os.path.samestat(os.fstat(stream.fileno()), path.stat())
    except (OSError, ValueError, AttributeError):
        return False


def quiet(warnings: bool = False) -> None:
    """No weight-loading bars or optional-kernel notices; library warnings only if `warnings`."""
    # bitsandbytes announces on import that an optional CPU kernel package is missing; it is not needed.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if "transformers" not in sys.modules and "huggingface_hub" not in sys.modules:
        # Both read these when imported: a command that never needs them (a merge tensor by tensor) does not
        # import them (a second and more) to quiet them.
        os.environ["TRANSFORMERS_VERBOSITY"] = "warning" if warnings else "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning() if warnings else hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
