"""Where things live on disk: the workspace (data, datasets, runs, merged models) and the model cache.

Both can be moved with environment variables so that tests and several installs stay apart:
QLORA_STUDIO_HOME (default ./workspace) and QLORA_STUDIO_CACHE (default ~/.cache/qlora-studio).
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The workspace folder: uploads, prepared datasets, runs and merged models."""
    return Path(os.environ.get("QLORA_STUDIO_HOME", "workspace")).expanduser().resolve()


def cache() -> Path:
    """Converted models (the embedded default) live here and are reused across workspaces."""
    default = Path.home() / ".cache" / "qlora-studio"
    return Path(os.environ.get("QLORA_STUDIO_CACHE", default)).expanduser().resolve()


def uploads() -> Path:
    return home() / "data"


def datasets() -> Path:
    return home() / "datasets"


def runs() -> Path:
    return home() / "runs"


def merged() -> Path:
    return home() / "merged"


def models() -> Path:
    """Local model folders the user drops in; the panel lists them."""
    return home() / "models"
