"""16-bit chat on the GPU: plain generate() against the replayed steps (core.decode.Replayed), side by side.

    python bench/replay.py --tokenizer TOKDIR [--shapes 135m,13b] [--new-tokens 200] [--cudnn on|off] [--compiled]
                           [--overlap on,off]

For each shape a random bf16 Llama (bench/speed.py's shapes; random weights: the question is the arithmetic and
the speed, not the answer) is built on the GPU. On one prompt of 500 tokens, greedy, --new-tokens tokens:
  - plain `model.generate()` (its dynamic cache), three times: tokens/s, and whether its runs agree;
  - the replayed steps, with and without independent kernels side by side (--overlap): the seconds to record and check them, the reply twice on prompts of lengths this process
    has not met ("cold": each length of the cache is new to torch's attention) and again on the same prompt
    ("warm"): tokens/s, time to the first token, and whether the tokens are plain generate()'s;
  - with --compiled, the compiled loop (core.decode.Decoder, inductor with CUDA graphs on a static cache).
--cudnn off is what the panel's chat process does (core.chat): torch's attention without cuDNN's kernels.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import speed  # bench/speed.py, beside this file
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from core.decode import Decoder, Replayed

TEXT = "请详细介绍一下长城的历史，包括它的修建年代、主要作用以及今天的保护情况。" * 200


class Taken:
    """A streamer that keeps the ids and when they came."""

    def __init__(self):
        self.ids, self.times, self.prompt = [], [], True

    def put(self, value):
        if self.prompt:
            self.prompt = False
            return
        self.ids += value.reshape(-1).tolist()
        self.times.append((time.perf_counter(), len(self.ids)))

    def end(self):
        pass


def write(decoder, ids, new: int) -> tuple[list[int], float, float]:
    """(ids, tokens/s after the first, seconds to the first) of one greedy reply."""
    out = Taken()
    torch.cuda.synchronize()
    start = time.perf_counter()
    decoder.reply(ids, max_new_tokens=new, do_sample=False, eos_token_id=[], streamer=out, stop=lambda: False)
    (t0, n0), (t1, n1) = out.times[0], out.times[-1]
    return out.ids, (n1 - n0) / (t1 - t0), t0 - start


def busy(decoder, ids, new: int) -> None:
    """How much of a reply's wall time the GPU spends in kernels (torch's profiler; kernels inside graphs too)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as p:
        torch.cuda.synchronize()
        start = time.perf_counter()
        write(decoder, ids, new)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu = sum(e.device_time for e in kernels) / 1e6
    print(f"  profiled reply: wall {wall:.3f} s, kernels {gpu:.3f} s ({len(kernels)} kernels, "
          f"{len(kernels) / new:.0f} a token)", flush=True)


def measure(shape: str, tok, new: int, compiled: bool, overlaps: list[bool], profile: bool) -> None:
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=shape == "135m",
                      **speed.SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    text = tok(TEXT, return_tensors="pt").input_ids.cuda()
    prompt = text[:, :500]
    n = prompt.shape[1]
    options = dict(do_sample=False, pad_token_id=0, eos_token_id=None, temperature=None, top_p=None, top_k=None)
    runs, speeds = [], []
    with torch.no_grad():
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            runs.append(model.generate(prompt, max_new_tokens=new, **options)[0, n:].tolist())
            torch.cuda.synchronize()
            speeds.append(new / (time.perf_counter() - start))
    plain = runs[-1]
    print(f"== {shape}: prompt {n} tokens, {new} new, attention {cfg._attn_implementation}, cuDNN attention "
          f"{'on' if torch.backends.cuda.cudnn_sdp_enabled() else 'off'}", flush=True)
    print(f"plain generate: {', '.join(f'{x:.1f}' for x in speeds)} tokens/s; its three runs agree: "
          f"{all(r == plain for r in runs)}", flush=True)
    for overlap in overlaps:
        start = time.perf_counter()
        replayed = Replayed(model, 4096, overlap=overlap)
        try:
            replayed.check()
        except ValueError as e:
            print(f"replayed, overlap {'on' if overlap else 'off'}: CHECK FAILED: {e}", flush=True)
        side = f", {replayed.overlap.forks} operations on side streams" if overlap else ""
        print(f"replayed, overlap {'on' if overlap else 'off'}: recorded {len(replayed.graphs)} graphs{side} and "
              f"checked in {time.perf_counter() - start:.2f} s", flush=True)
        for label, ids in (("cold", text[:, 37 + overlap:37 + overlap + n]), ("warm", text[:, 37 + overlap:37 + overlap + n]),
                           ("plain's prompt", prompt), ("plain's prompt", prompt)):
            got, rate, first = write(replayed, ids, new)
            same = f"; plain generate()'s tokens: {got == plain}" if ids is prompt else ""
            print(f"replayed, overlap {'on' if overlap else 'off'}, {label}: {rate:.1f} tokens/s, first token "
                  f"{first:.3f} s{same}", flush=True)
        print(f"GPU peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
        if profile:
            busy(replayed, prompt, new)
        del replayed
        torch.cuda.empty_cache()
    if compiled:
        start = time.perf_counter()
        loop = Decoder(model, 4096, compile=True)
        write(loop, prompt, 20)
        write(loop, text[:, :100], 20)
        print(f"compiled loop: warm-up {time.perf_counter() - start:.1f} s", flush=True)
        for _ in range(2):
            loop.forget()
            got, rate, first = write(loop, prompt, new)
            print(f"compiled loop: {rate:.1f} tokens/s, first token {first:.3f} s; plain generate()'s tokens: "
                  f"{got == plain}", flush=True)
        del loop
        torch.compiler.reset()
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--shapes", default="135m,13b")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--cudnn", choices=("on", "off"), default="off")
    p.add_argument("--compiled", action="store_true")
    p.add_argument("--profile", action="store_true", help="also a profiled reply: the GPU's kernel time in it")
    p.add_argument("--overlap", default="on,off", help="the replayed steps with independent kernels side by side "
                   "(core.overlap), without, or both in turn")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/replay.py measures CUDA graphs: it needs a GPU")
    torch.backends.cuda.enable_cudnn_sdp(a.cudnn == "on")
    print(f"# {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    for shape in a.shapes.split(","):
        measure(shape, tok, a.new_tokens, a.compiled, [x == "on" for x in a.overlap.split(",")], a.profile)


if __name__ == "__main__":
    main()
