"""The monitor on a machine without a GPU: numbers for CPU and RAM, an empty GPU list and a note, never an error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import monitor

ROOT = Path(__file__).resolve().parent.parent


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_gpu(), reason="checks the no-GPU case")
def test_snapshot_without_gpu():
    snap = monitor.snapshot()
    assert snap["gpus"] == [] and snap["gpu_note"] == "no GPU found"
    assert 0 < snap["ram_used_gb"] < snap["ram_total_gb"]
    assert 0 <= snap["cpu_percent"] <= 100


def test_snapshot_survives_a_broken_driver(monkeypatch):
    def broken():
        raise RuntimeError("driver gone")

    monkeypatch.setattr(monitor, "_gpus", broken)
    snap = monitor.snapshot()
    assert snap["gpus"] == [] and "unavailable" in snap["gpu_note"] and snap["ram_total_gb"] > 0


def test_cli_prints_json():
    out = subprocess.run([sys.executable, "-m", "core", "monitor"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    snap = json.loads(out.stdout)
    assert {"gpus", "cpu_percent", "ram_used_gb", "ram_total_gb"} <= set(snap)
