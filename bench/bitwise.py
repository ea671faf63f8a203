"""Whether a fast decoding path gives plain generate()'s logits bit for bit, step by step.

A random Llama of each shape given (bf16; random weights are enough: the question is the arithmetic, not the
answer) writes greedy tokens with plain `model.generate()` (its dynamic cache) and keeps each step's logits.
Then each path is fed the same tokens (teacher forcing) and its logits are compared with those:
core.decode.Decoder's step as it is (a static cache, no compilation); the same step under
torch.compile(backend="cudagraphs") (the same kernels, replayed from CUDA graphs); and under inductor with CUDA
graphs ("reduce-overhead", what the panel runs on a GPU). The compiled paths run twice, so that a difference
between two runs of one path shows too. Prints, per path, how many steps are equal bit for bit, the largest
difference, the steps where the top token differs, and the teacher-forced tokens/s. On a CPU only the first path.

    python bench/bitwise.py --tokenizer TOKDIR [--shapes 135m,7b] [--new-tokens 40]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import speed  # bench/speed.py, beside this file
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from core.decode import Decoder

SHAPES = {**speed.SHAPES,  # the benchmarks' Llama shapes (bench/speed.py), and one small enough for a CPU
          "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)}
TEXT = "请详细介绍一下长城的历史，包括它的修建年代、主要作用以及今天的保护情况。" * 12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--shapes", default="135m,7b")
    p.add_argument("--new-tokens", type=int, default=40)
    a = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    for name in a.shapes.split(","):
        compare(name, tok, dev, a.new_tokens)
        if dev == "cuda":
            torch.cuda.empty_cache()  # the shape's model went with compare()


def compare(name: str, tok, dev: str, new: int) -> None:
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False, **SHAPES[name])
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :500].to(dev)
    n = ids.shape[1]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None, temperature=None, top_p=None, top_k=None)
    ref = torch.cat(out.logits).float()  # [new, vocab]
    toks = out.sequences[0, n:]
    print(f"== {name}: prompt {n} tokens, {new} new, attention {model.config._attn_implementation}", flush=True)

    def forced(dec, label: str, compiled: bool) -> None:
        logs = []
        with torch.no_grad():
            dec.cache.reset()
            logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, position_ids=torch.arange(n, device=dev)[None],
                           **{dec.cache_arg: dec.cache}).logits[:, -1, :]
            logs.append(logits.float().clone())
            for i in range(new - 1):
                if compiled:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = dec.step(toks[i:i + 1].view(1, 1).clone(), torch.full((1,), n + i, dtype=torch.long, device=dev))
                logs.append(logits.float().clone())
        got = torch.cat(logs)
        equal = (got == ref).all(dim=1)
        top = torch.nonzero(got.argmax(1) != ref.argmax(1)).flatten().tolist()
        print(f"{label:16s} equal bit for bit: {int(equal.sum())}/{new} steps (the prompt's: {bool(equal[0])}); "
              f"largest difference {float((got - ref).abs().max()):.4g}; top token differs at steps {top[:8]}", flush=True)

    forced(Decoder(model, 4096, compile=False), "static, eager", False)
    if dev == "cuda":
        for label, wrap in [("cudagraphs", lambda f: torch.compile(f, backend="cudagraphs", dynamic=False)),
                            ("inductor", lambda f: torch.compile(f, mode="reduce-overhead", dynamic=False))]:
            torch.compiler.reset()
            dec = Decoder(model, 4096, compile=False)
            dec.step = wrap(dec._step)
            t0 = time.perf_counter()
            forced(dec, label + " (1st)", True)
            t1 = time.perf_counter()
            forced(dec, label + " (2nd)", True)
            t2 = time.perf_counter()
            print(f"{label:16s} {new / (t2 - t1):.1f} teacher-forced tokens/s; first run, compiling included, "
                  f"{t1 - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
