"""The local models: what each one is and whether it fits this machine's GPU, read from its files alone.

Every folder `models.local()` finds (workspace/models, workspace/merged, the operator-allowed
folders) and the embedded default, with the size of its weights, its parameter count (from the
safetensors headers), its architecture (config.json), whether it has a chat template (tokenizer
files) and whether it fits the GPU for training and for chat (core.fit). No weights are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from core import fit, models, paths
from core.config import DEFAULT_MODEL


def listing(free: int | None) -> list[dict]:
    """One entry per local model, the embedded default first; `free`: the GPU's free bytes, None without a GPU."""
    found = [describe(models.embedded(convert=False), free, spec=DEFAULT_MODEL, where="embedded")]
    for folder in models.local():
        found.append(describe(folder, free, where=_where(folder)))
    return found


def describe(folder: str | Path, free: int | None, *, spec: str | None = None, where: str = "") -> dict:
    """What `folder` holds: name, size, parameters, architecture, chat template, fit (training, chat)."""
    folder = Path(folder)
    entry = {"name": folder.name if spec != DEFAULT_MODEL else f"{DEFAULT_MODEL} ({models.EMBEDDED_NAME})",
             "spec": spec or str(folder), "path": str(folder), "where": where, "size_bytes": None,
             "parameters": None, "architecture": "", "chat_template": False, "train_fit": None, "chat_fit": None,
             "problem": None}
    if not (folder / "config.json").is_file():
        # The embedded default before its first use: converted from the package's file when first needed.
        entry["problem"] = "not converted yet" if spec == DEFAULT_MODEL else "no config.json"
        return entry
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        entry["problem"] = f"config.json: {type(e).__name__}"
        return entry
    config = config if isinstance(config, dict) else {}
    entry["architecture"] = ((config.get("architectures") or [""])[0] or config.get("model_type") or "")
    entry["chat_template"] = has_chat_template(folder)
    entry["size_bytes"] = sum(p.stat().st_size for p in folder.glob("*.safetensors")) or sum(
        p.stat().st_size for p in folder.glob("pytorch_model*.bin"))
    try:
        entry["parameters"] = fit.parameters(folder)[0]
    except Exception as e:  # noqa: BLE001 - a cut-off or garbled weight file: say so in the list
        entry["problem"] = f"weights unreadable ({type(e).__name__})"
        return entry
    if free is not None and entry["parameters"]:
        entry["train_fit"] = fit.training_needs(folder) <= free
        need = fit.needs(folder)  # what Auto would load it in (int4 only ever when chosen)
        entry["chat_fit"] = next((p for p in fit.PRECISIONS if need[p] <= free), "")
    return entry


def has_chat_template(folder: str | Path) -> bool:
    """Whether the model's tokenizer files carry a chat template (in tokenizer_config.json or a file of its own)."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(config, dict) and config.get("chat_template"))


def gpu_free() -> int | None:
    """The GPU's free bytes for a new job (read through NVML: the panel starts no CUDA context), or None
    when this machine has no GPU."""
    return fit.machine()["gpu"]


def _where(folder: Path) -> str:
    resolved = folder.resolve()
    for name, root in (("workspace", paths.models()), ("merged", paths.merged())):
        if paths.within(resolved, root.resolve()):
            return name
    return "allowed"
