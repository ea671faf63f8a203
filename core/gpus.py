"""Which GPUs a job may see.

A job on one GPU must see only that GPU: transformers' Trainer wraps a model in
nn.DataParallel whenever one process sees several GPUs, and then refuses to train. So every
job gets CUDA_VISIBLE_DEVICES narrowed to the chosen card (the first one until the user picks
another), numbered in PCI bus order like the monitor (NVML), so "GPU 1" means the same card
on the page and in the job. Runs under a distributed launcher (torchrun sets LOCAL_RANK) are
left alone: the launcher gives each process its card.
"""

from __future__ import annotations

import os


def count() -> int:
    """How many NVIDIA GPUs the machine has (NVML; 0 without a driver), ignoring CUDA_VISIBLE_DEVICES."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # no library, no driver: no GPU to choose
        return 0


def visible(env: dict | None = None) -> list[str]:
    """The GPUs a process started with `env` would see, as CUDA_VISIBLE_DEVICES entries."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    return [str(i) for i in range(count())]


def one(env: dict | None = None, gpu: str | None = None) -> dict:
    """`env` changed so that a job sees a single GPU: `gpu` if given, else the first visible one."""
    env = dict(os.environ if env is None else env)
    if "LOCAL_RANK" in env:
        return env
    seen = visible(env)
    if gpu is None and len(seen) <= 1:
        return env  # nothing to choose between: leave the environment as the operator set it
    env["CUDA_DEVICE_ORDER"] = env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else (seen[0] if seen else "")
    return env
