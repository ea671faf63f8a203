"""How fast, and in how much memory, `prepare` samples 1000 rows from a Belle-sized file.

    python bench/prepare_speed.py [--rows 500000] [--sample 1000] [--file /tmp/belle_like_500k.jsonl]

Writes a Belle-like file (Chinese instruction/input/output rows of about 600 bytes) to /tmp
once, then times, each in a fresh child process so that peak memory is its own:

  - whole file   read every line into a list, json.loads each, random.sample(N)
                 (the usual notebook way; memory grows with the file)
  - reading      the reading pass of prepare alone (stream, validate, reservoir), no tokenizer
  - prepare      `python -m core prepare FILE --sample N` (streaming + reservoir; memory
                 bounded by N), tokenizer loading and token statistics included, on the
                 first tenth of the file and on all of it: the same peak memory means bounded

and prints a table: wall seconds and peak RSS (resource.getrusage of the child).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORDS = ("我们 今天 学习 模型 数据 问题 回答 城市 春天 历史 科学 技术 朋友 学生 老师 工作 生活 健康 经济 文化 "
         "环境 发展 重要 方法 计算 翻译 总结 文章 句子 故事 电脑 手机 音乐 电影 旅行 天气 运动 食物 语言 世界").split()
TASKS = ("请解释下面的概念。", "把下面的句子翻译成英文。", "用一句话总结这段文字。", "写一段关于{w}的短文。",
         "回答下面的问题：{w}为什么重要？", "列出三个与{w}有关的建议。")


def sentence(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(WORDS) for _ in range(n)) + rng.choice("。，！？")


def make_file(path: Path, rows: int, seed: int = 0) -> None:
    """Belle-like JSON lines: about 600 bytes a row, a third with `input` filled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            inp = "".join(sentence(rng, 6) for _ in range(rng.randint(1, 3))) if i % 3 == 0 else ""
            row = {"instruction": rng.choice(TASKS).format(w=rng.choice(WORDS)), "input": inp,
                   "output": "".join(sentence(rng, 8) for _ in range(rng.randint(6, 13)))}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


READ_ONLY = """
import hashlib, resource, sys
from pathlib import Path
from core.config import PrepareConfig
from core.data import _read
picked, counts, _ = _read(Path(sys.argv[1]), PrepareConfig(input=sys.argv[1], sample=int(sys.argv[2])), hashlib.sha256())
print(counts["read"], len(picked))
"""

WHOLE_FILE = """
import json, random, sys
with open(sys.argv[1], encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
picked = random.Random(42).sample(rows, int(sys.argv[2]))
print(len(rows), len(picked))
"""


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one child process, from its own rusage."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's peak, not the largest child so far
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{err.read()}")
        return wall, usage.ru_maxrss / 1024, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--file", default="/tmp/belle_like_500k.jsonl")
    args = ap.parse_args()

    src = Path(args.file)
    if not src.is_file() or sum(1 for _ in src.open("rb")) != args.rows:
        t = time.perf_counter()
        make_file(src, args.rows)
        print(f"wrote {src} ({args.rows} rows) in {time.perf_counter() - t:.1f} s")
    size = src.stat().st_size
    print(f"file: {size / 1e6:.0f} MB, {args.rows} rows, {size / args.rows:.0f} bytes a row")

    small = src.with_name(src.stem + "_tenth.jsonl")  # the first tenth: does memory grow with the file?
    with src.open("rb") as f, small.open("wb") as g:
        for i, line in enumerate(f):
            if i == args.rows // 10:
                break
            g.write(line)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    n = str(args.sample)
    try:
        whole = timed([sys.executable, "-c", WHOLE_FILE, str(src), n], env)
        read = timed([sys.executable, "-c", READ_ONLY, str(src), n], env)
        tenth = timed([sys.executable, "-m", "core", "prepare", str(small), "--out", str(out / "a"), "--sample", n], env)
        ours = timed([sys.executable, "-m", "core", "prepare", str(src), "--out", str(out / "b"), "--sample", n], env)
        summary = ours[2]
    finally:
        shutil.rmtree(out, ignore_errors=True)
        small.unlink()

    import tokenizers
    import transformers

    print(f"\nmachine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}; "
          f"Python {platform.python_version()}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}")
    print(f"\n| sample {args.sample} rows from | approach | wall s | peak RSS MiB |")
    print("|---|---|---:|---:|")
    print(f"| {args.rows} rows | whole file in memory + random.sample | {whole[0]:.1f} | {whole[1]:.0f} |")
    print(f"| {args.rows} rows | reading pass of prepare only (no tokenizer) | {read[0]:.1f} | {read[1]:.0f} |")
    print(f"| {args.rows // 10} rows | `python -m core prepare` | {tenth[0]:.1f} | {tenth[1]:.0f} |")
    print(f"| {args.rows} rows | `python -m core prepare` | {ours[0]:.1f} | {ours[1]:.0f} |")
    print("\nprepare said:\n" + summary)


if __name__ == "__main__":
    main()
