"""`python -m core monitor`: what the GPUs, the CPU and the memory are doing right now.

NVML (nvidia-ml-py) gives the GPU numbers without touching torch, so the panel can poll it
every second; a machine with no GPU or no NVML library gets an empty list and a note.
"""

from __future__ import annotations

import json
import threading
import time

_lock = threading.Lock()
_nvml_ready: bool | None = None


def snapshot() -> dict:
    """{"gpus": [...], "cpu_percent", "ram_used_gb", "ram_total_gb"} (plus "gpu_note" when there is no GPU)."""
    import psutil

    vm = psutil.virtual_memory()
    out = {
        "gpus": [],
        "cpu_percent": psutil.cpu_percent(interval=None),
        "ram_used_gb": round((vm.total - vm.available) / 2**30, 2),
        "ram_total_gb": round(vm.total / 2**30, 2),
    }
    try:
        out["gpus"] = _gpus()
    except Exception as e:  # a broken driver must not break the panel's live view
        out["gpu_note"] = f"GPU readings unavailable ({type(e).__name__})"
        return out
    if not out["gpus"]:
        out["gpu_note"] = "no GPU found"
    return out


def _gpus() -> list[dict]:
    global _nvml_ready
    try:
        import pynvml
    except ImportError:
        return []
    with _lock:
        if _nvml_ready is None:
            try:
                pynvml.nvmlInit()  # once per process: init is slow and shutdown is not needed
                _nvml_ready = True
            except pynvml.NVMLError:
                _nvml_ready = False
        if not _nvml_ready:
            return []
    gpus = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        name = pynvml.nvmlDeviceGetName(h)
        gpus.append({
            "index": i,
            "name": name.decode() if isinstance(name, bytes) else name,
            "util_percent": _try(lambda h=h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
            "memory_used_gb": round(mem.used / 2**30, 2),
            "memory_total_gb": round(mem.total / 2**30, 2),
            "temperature_c": _try(lambda h=h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
            "power_w": _try(lambda h=h: round(pynvml.nvmlDeviceGetPowerUsage(h) / 1000, 1)),
        })
    return gpus


def _try(read):
    """One reading, or None where the card does not report it (some cloud GPUs hide power or temperature)."""
    try:
        return read()
    except Exception:
        return None


def cli(argv: list[str]) -> int:
    """Print one snapshot as JSON."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m core monitor\n\nPrint a GPU / CPU / RAM snapshot as JSON.")
        return 0
    import psutil

    psutil.cpu_percent(interval=None)  # the first reading is meaningless; prime it
    time.sleep(0.2)
    print(json.dumps(snapshot(), indent=2))
    return 0
