"""The GPU pickers of the Train and Chat tabs: each GPU with its name and free memory (the monitor's NVML readings)."""

from __future__ import annotations

from ui.i18n import say


def choices(first: str, every: str, language: str = "en") -> list[tuple[str, str]]:
    """The choices of a GPU picker: `first` (the i18n key of the empty value), each GPU with its free memory,
    then all of them together (`every`, the key of that choice: what several GPUs do in this tab).

    Only the GPUs the panel may use: where it was started with CUDA_VISIBLE_DEVICES, those it names (the monitor
    still shows every GPU)."""
    from core import gpus, monitor

    found = monitor.snapshot().get("gpus", [])
    allowed = gpus.visible()
    if allowed and all(a.isdigit() for a in allowed):  # GPU numbers; UUIDs cannot be matched to NVML's numbers here
        found = [g for g in found if str(g["index"]) in allowed]
    out = [("", "")] if not found else [(say(first, language), "")]
    for g in found:
        free = g.get("memory_total_gb", 0) - g.get("memory_used_gb", 0)
        out.append((say("gpu_one", language, index=g["index"], name=g["name"], free=f"{free:.0f}"), str(g["index"])))
    if len(found) > 1:
        out.append((say(every, language, n=len(found)), ",".join(str(g["index"]) for g in found)))
    return out
