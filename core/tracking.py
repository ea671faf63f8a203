"""Experiment tracking for a run: tensorboard into RUN/tensorboard, or wandb that never blocks.

wandb gets its key from the WANDB_API_KEY environment variable (never from config.json) and
falls back to offline mode, within seconds and saying so, when there is no key or no network.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

log = logging.getLogger("qlora_studio.train")


def leave_out(report_to: str) -> None:
    """For a training process that will not report to wandb: do not import it at all.

    transformers' is_wandb_available(), which trl asks as it is imported, imports wandb to check it (0.8 to 1.7 s
    of a run's start on a CPU). None in sys.modules is Python's own "not installed", for this process alone:
    find_spec says so and an import fails. Only for a process of its own (the command line's), before trl is
    imported: a later run in the same process could not report to wandb.
    """
    if report_to != "wandb":
        sys.modules.setdefault("wandb", None)


def setup(report_to: str, project: str, run: Path) -> list[str]:
    """Set up wandb or tensorboard; wandb never prompts and never waits for a network that isn't there."""
    if report_to == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run / "tensorboard")
        return ["tensorboard"]
    if report_to != "wandb":
        return []
    os.environ.update(WANDB_SILENT="true", WANDB_DIR=str(run), WANDB_PROJECT=project,
                      WANDB_CONSOLE="off", WANDB_INIT_TIMEOUT="30")
    if os.environ.get("WANDB_MODE") == "offline":
        log.info("wandb: offline mode (WANDB_MODE=offline); sync later with `wandb sync %s/wandb`", run)
    elif not _wandb_key():
        os.environ["WANDB_MODE"] = "offline"
        log.info("wandb: no API key (set WANDB_API_KEY): logging offline into %s/wandb", run)
    elif not _reachable("api.wandb.ai", 443):
        os.environ["WANDB_MODE"] = "offline"
        log.info("wandb: api.wandb.ai is not reachable: logging offline into %s/wandb", run)
    return ["wandb"]


def _wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
