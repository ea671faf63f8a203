"""Where the time of one training job goes: start-up, the first step, and one steady step.

Runs `python -m core train` in this process, exactly as the panel's child would, with three
probes and nothing else changed:

  - a Python profile (cProfile) from process start to the end of the first optimizer step:
    imports, tokenizing, model loading, trainer set-up, first-step compilation;
  - wall time of each of the first steps (the GPU synchronised around each);
  - a torch.profiler trace of one steady step (--profile-step), summed by kernel and by kind
    (matrix multiplications, attention, 4-bit dequantisation, copies, everything else).

    python bench/breakdown.py --report DIR -- --model M --data D --out RUN [any train flag]

DIR gets startup.txt (the Python profile), kernels.txt (the step trace) and summary.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

STARTED = time.time()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = (  # kernel name fragments -> kind, first match wins
    ("attention", ("fmha", "flash", "attention", "sdpa", "cutlassf", "cutlassb")),
    ("4-bit dequantize", ("dequantize", "kdequant", "kgemm_4bit", "bnb")),
    ("FP8 scaling", ("vector_norm",)),  # core.fp8's compiled row scaling, named "..._to_copy_clamp_linalg_vector_norm..."
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "wgmma")),
    ("copy / offload", ("memcpy", "memset", "copy")),
)


def kind(name: str) -> str:
    low = name.lower()
    return next((k for k, frags in KINDS if any(f in low for f in frags)), "other")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report", required=True)
    p.add_argument("--profile-step", type=int, default=4, help="which optimizer step to trace (1-based)")
    p.add_argument("train", nargs=argparse.REMAINDER, help="-- then the flags of `python -m core train`")
    a = p.parse_args()
    report = Path(a.report)
    report.mkdir(parents=True, exist_ok=True)
    argv = [x for x in a.train if x != "--"]

    prof = cProfile.Profile()
    prof.enable()
    import torch
    import trl

    steps: list[float] = []
    summary: dict = {"argv": argv}
    original = trl.SFTTrainer.training_step

    def training_step(self, *args, **kwargs):
        n = len(steps) + 1
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
        t = time.time()
        if n == a.profile_step and cuda:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
                out = original(self, *args, **kwargs)
                torch.cuda.synchronize()
            _write_trace(trace, report, summary)
        else:
            out = original(self, *args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
        steps.append(time.time() - t)
        if n == 1:
            prof.disable()
            summary["start_to_first_step_s"] = round(t - STARTED, 2)
            summary["first_step_s"] = round(steps[0], 2)
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(120)
            (report / "startup.txt").write_text(s.getvalue())
        return out

    trl.SFTTrainer.training_step = training_step
    from core.config import Parser, TrainConfig, add_arguments
    from core.train import build_config, train

    parser = Parser(prog="bench/breakdown.py")
    add_arguments(parser, TrainConfig)
    result = train(build_config(vars(parser.parse_args(argv))))
    summary.update(state=result["state"], error=result.get("error"), step_s=[round(x, 3) for x in steps],
                   total_s=round(time.time() - STARTED, 1))
    (report / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


def _write_trace(trace, report: Path, summary: dict) -> None:
    from torch.autograd import DeviceType

    # Kernels and copies only: the CPU-side operators that launched them carry the same time again.
    events = [e for e in trace.key_averages() if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    gpu = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in gpu)
    by_kind: dict[str, float] = {}
    lines = [f"{'self GPU ms':>11} {'share':>6} {'calls':>6}  kernel"]
    for e in gpu:
        by_kind[kind(e.key)] = by_kind.get(kind(e.key), 0) + e.self_device_time_total
        if e.self_device_time_total > total * 0.002:
            lines.append(f"{e.self_device_time_total / 1e3:11.1f} {e.self_device_time_total / total:6.1%} {e.count:6d}  {e.key[:140]}")
    (report / "kernels.txt").write_text("\n".join(lines) + "\n")
    summary["traced_gpu_ms"] = round(total / 1e3, 1)
    summary["gpu_ms_by_kind"] = {k: round(v / 1e3, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
