"""Which GPUs a job may see.

A job on one GPU must see only that GPU: transformers' Trainer wraps a model in
nn.DataParallel whenever one process sees several GPUs, and then refuses to train. So every
job gets CUDA_VISIBLE_DEVICES narrowed to the chosen card (the first one until the user picks
another), numbered in PCI bus order like the monitor (NVML), so "GPU 1" means the same card
on the page and in the job. Runs under a distributed launcher (torchrun sets LOCAL_RANK) are
left alone: the launcher gives each process its card.

Training on two or more GPUs is data-parallel: the job is torch's own launcher (torchrun) with
one process per chosen GPU, each seeing all the chosen cards and taking the one of its local
rank. Rank 0 alone writes the run's files; the others train and stay quiet.

`release_memory` gives the GPU memory of what a process let go of back to the driver (when a run ends, when a chat closes).
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sys

from core.errors import Text, UserError

# Data-parallel training in this many processes on a machine without GPUs (gloo on CPU): how the
# launcher, the ranks and their stop are tested where there is no GPU. Never needed by a user.
CPU_PROCESSES_ENV = "QLORA_STUDIO_CPU_PROCESSES"
LAUNCHER = "torch.distributed.run"  # torchrun, as a module of the same Python


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


def bus_order() -> None:
    """Have torch in this process number the GPUs in PCI bus order, like NVML and the jobs (before CUDA starts here)."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


def torch_index(gpu: int, env: dict | None = None) -> int:
    """Torch's number, in a process with `env` (this one by default), for the GPU numbered `gpu` on the page.

    The page numbers GPUs as NVML does; torch numbers those a process sees from 0, in the order
    CUDA_VISIBLE_DEVICES lists them (all of them, in bus order, when it is unset: bus_order). A UserError
    when the process cannot see that GPU.
    """
    seen = visible(env)
    if str(gpu) in seen:
        return seen.index(str(gpu))
    raise UserError(f"gpus: GPU {gpu} is not one this panel can use (it sees {', '.join(seen) or 'none'})",
                    field="gpus", zh=f"gpus：面板用不了 GPU {gpu}（它能用的是 {', '.join(seen) or '无'}）")


def idlest(cards: list[dict], busy=frozenset(), avoid=frozenset(), env: dict | None = None) -> tuple[int, bool] | None:
    """The GPU a chat model goes on when none is chosen: (its number, whether a job uses it too), None without one.

    `cards` are the monitor's readings. Of the GPUs this process sees, the one with the most free memory that no
    job uses (`busy`) and the other chat model does not (`avoid`); failing that, one no job uses; failing that,
    any (a job shares it, and the chat says so).
    """
    seen = set(visible(env))
    cards = [c for c in cards if str(c["index"]) in seen]
    for pool in ([c for c in cards if c["index"] not in {*busy, *avoid}], [c for c in cards if c["index"] not in busy],
                 cards):
        if pool:  # the first of equals: the lowest number
            best = max(pool, key=lambda c: c["memory_total_gb"] - c["memory_used_gb"])
            return best["index"], best["index"] in busy
    return None


def trains_on(spec: str | None, env: dict | None = None) -> set[int]:
    """The GPUs (their numbers on the page) a run started with the picker at `spec` trains on: those named, else
    the first one visible (as narrow() starts it); none on a machine without a GPU."""
    try:
        picked = parse(spec)
    except ValueError:
        picked = []
    return {int(g) for g in picked or visible(env)[:1] if g.isdigit()}


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


def parse(spec: str | None) -> list[str]:
    """ "0, 1" as ["0", "1"]; "" or None as [] (the first GPU). ValueError for anything else."""
    spec = (spec or "").replace(" ", "")
    if not spec:
        return []
    if not re.fullmatch(r"\d+(,\d+)*", spec):
        raise ValueError(Text(f"gpus: {spec!r} is not a list of GPU numbers such as 0,1",
                              f"gpus：{spec!r} 不是 GPU 编号列表，应写成 0,1 这样"))
    picked = spec.split(",")
    if len(set(picked)) != len(picked):
        raise ValueError(Text(f"gpus: {spec!r} names a GPU twice", f"gpus：{spec!r} 重复列出了同一块 GPU"))
    return picked


def processes(picked: list[str], env: dict | None = None) -> int:
    """How many training processes a job on `picked` runs: one per GPU, at least one."""
    env = os.environ if env is None else env
    if len(picked) > 1:
        return len(picked)
    try:
        return max(1, int(env.get(CPU_PROCESSES_ENV, "1"))) if not picked and count() == 0 else 1
    except ValueError:
        return 1


def command(base: list[str], argv: list[str], n: int) -> list[str]:
    """`base + argv` (e.g. python -m core train …), under torchrun with `n` processes when n > 1."""
    if n <= 1:
        return [*base, *argv]
    # torchrun as `python -m`: the same interpreter and packages as the panel. --standalone picks a
    # free port on this host, so two jobs never clash.
    return [base[0], "-m", LAUNCHER, "--standalone", f"--nproc-per-node={n}", *base[1:], *argv]


def narrow(env: dict, picked: list[str]) -> dict:
    """`env` for a job on the `picked` GPUs (all of them visible when several: one per rank)."""
    if len(picked) <= 1:
        return one(env, picked[0] if picked else None)
    env = dict(env)
    env["CUDA_DEVICE_ORDER"] = env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(picked)
    return env


def rank() -> int:
    """This process's rank among the processes of a data-parallel run (0 alone)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """Which of the visible GPUs this process trains on."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def world() -> int:
    """How many processes train this run together."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def release_memory() -> None:
    """Collect what nothing references any more, then give the GPU's cached blocks back to the driver.

    A model let go of is often still held by a reference cycle (a finished training run's model and trainer, a
    closed chat's) until the collector runs: until then its GPU memory counts as taken, in this process's fit
    checks too. torch is not imported for it: a process that never used torch holds no GPU memory. It never raises:
    a GPU left in an error state (a failed kernel fails every later call) must not hide how a run or a chat ended.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    try:
        # Each GPU that holds memory here: a bare synchronize() would start a context on GPU 0 even where the
        # model was on another (a training run's, say).
        for index in range(torch.cuda.device_count()):
            if torch.cuda.memory_reserved(index):
                torch.cuda.synchronize(index)
        # cuBLAS keeps a workspace (32 MiB on an H200) for each thread's stream, and the one of the chat's
        # thread sat in the segment transformers reserves for the whole model at load: that one small block
        # kept the whole segment, 12.8 GiB of an 8-bit 13B, reserved after close (H200).
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None:
            clear()
        torch.cuda.empty_cache()
    except RuntimeError as e:
        logging.getLogger(__name__).debug("GPU memory not given back: %s", e)
