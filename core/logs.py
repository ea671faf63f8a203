"""Keeping a command's output to its own lines."""

from __future__ import annotations

import logging


def quiet(warnings: bool = False) -> None:
    """No weight-loading bars or optional-kernel notices; library warnings only if `warnings`."""
    # bitsandbytes announces on import that an optional CPU kernel package is missing; it is not needed.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning() if warnings else hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
