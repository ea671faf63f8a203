"""Chat speed: plain `model.generate` against the panel's own streaming path, side by side.

    python bench/chat_speed.py [--shapes 135m,7b,13b] [--precisions 16bit,4bit,int4] [--tokenizer TOKDIR]

For each shape and precision a child process loads the model once, the way the Chat tab does
(core.chat.Chat.load, warm-up included: on a GPU the static cache is compiled then), and measures
  - plain `generate`: greedy, no streamer, no stopping criteria, the model's own dynamic cache;
  - the panel's path: Chat.stream, exactly what the Chat tab runs, once per --decoders entry (replay: a 16-bit
    model's own kernels replayed from CUDA graphs, core.decode.Replayed; generate: transformers' generate on its
    compiled static cache; loop: core/decode.py, steps queued ahead),
    the later ones on the same loaded model warmed up again, checked to write the same greedy tokens;
each on a ~500-token prompt that holds two earlier turns of history: time to the first token,
and tokens/s for each of --replies replies of --new-tokens tokens (the tokens after the first, over
the time after the first: the decoding speed a reader sees). The GPU peak is taken per path.
Each measured reply reads its whole prompt (Chat.forget: the loop decoder would otherwise keep the
repeated prompt in its cache). Then, for the loop decoder, a conversation as the Chat tab has it:
the same two questions answered by the model (up to --new-tokens each), then a third question; its
first token is the "in a conversation" column (the cache still holds the turns before it,
core/decode.py), with that prompt's length and how much of it the cache held.
135m is the embedded model; 7b and 13b are random Llama-shaped models built on the GPU with the
tokenizer given (bench/speed.py builds them; the weights do not change the cost of a token).
On the CPU only 135m in float32 runs (precisions are GPU options).

A random model writes any token, and most of its replies do not tokenize back to the ids it wrote (byte pieces
merge differently), so the next turn would read its history again where a real model's would be held. The random
shapes' head is therefore limited to whole words with a leading space whose text reads back as the same token
(`words_only`; the cost of a step is unchanged), and the conversation's history holds each reply as the model
wrote it (a real model starts its reply without a space; the panel's display strips the one a random head writes).

With --side-by-side, instead: two copies of each model loaded in one process, as two panes of the Chat tab: the
first model answering alone (before the second loads), then the two answering one reply after the other, as the
tab does.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TURN = ("海上的风和光是怎样变化的？请详细描述一下清晨、正午和傍晚的不同。"
        "Describe how the wind and the light over the sea change from dawn to dusk, in detail. ")


def prompt(tokenizer, tokens: int = 500) -> tuple[list[tuple[str, str]], str]:
    """Two earlier turns of history and a message, about `tokens` tokens in all."""
    history = [(TURN, TURN * 2), (TURN, TURN * 2)]
    used = len(tokenizer("".join(a + b for a, b in history))["input_ids"])
    words = tokenizer(TURN * 20)["input_ids"][: max(16, tokens - used - 40)]
    return history, tokenizer.decode(words, skip_special_tokens=True)


def measure(model: str, precision: str, replies: int, new_tokens: int,
            decoders: tuple[str, ...] = ("generate",)) -> list[dict]:
    """Plain generate and the panel's path with each decoder (core.chat.DECODERS), on one loaded model: rows of the table."""
    import torch

    from core.chat import Chat, decoder_for
    from core.config import GenerationConfig

    cuda = torch.cuda.is_available()
    chat = Chat()
    chat.load(model, precision=precision, decoder=decoders[0])
    words = words_only(chat) if built_here(model) else None
    history, message = prompt(chat.tokenizer)
    gen = GenerationConfig(temperature=0, max_new_tokens=new_tokens, repetition_penalty=1.0)
    text = chat.template.prompt("", history, message, chat.tokenizer)
    inputs = chat.tokenizer(text, return_tensors="pt").to(chat.model.device)
    n_prompt = inputs["input_ids"].shape[1]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def plain(max_new: int) -> tuple[int, float]:
        # On a thread of its own, as the panel generates: on a CPU, torch's OpenMP threads run a
        # third slower on any thread once the main thread has generated too (measured), which
        # would count against whichever path runs second.
        done = {}

        def run():
            sync()
            start = time.perf_counter()
            out = chat.model.generate(**inputs, max_new_tokens=max_new, do_sample=False, temperature=None,
                                      top_p=None, top_k=None, pad_token_id=chat.tokenizer.pad_token_id)
            sync()
            done["made"], done["s"] = out.shape[1] - n_prompt, time.perf_counter() - start

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        return done["made"], done["s"]

    def peak() -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    rows = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first = min(plain(1)[1] for _ in range(2))
    speeds = []
    for _ in range(replies):  # tokens after the first, over the time after it: as Chat.last counts them
        made, seconds = plain(new_tokens)
        speeds.append((made - 1) / max(seconds - first, 1e-9))
    rows.append(dict(path="plain generate", tps=speeds, first=first, warmup=None, peak=peak()))
    for decoder in decoders:
        unusable = decoder == "replay" and decoder_for(chat.model) != "replay"  # a quantized model, or the CPU
        if not unusable and (decoder != chat.decoder or not chat.compiled):  # the same model, warmed up for this
            chat.decoder = decoder
            if cuda or decoder == "loop":  # on a CPU the loop runs on its static cache, uncompiled
                chat.warm_up()
        if decoder == "replay" and chat.decoder != "replay" or unusable:  # or its steps failed their check
            rows.append(dict(path="panel (Chat.stream, replay): not set up", tps=[], first=None, warmup=None,
                             peak=None, fallback=chat.replay_note or "replayed steps need a 16-bit model on one GPU"))
            continue
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        speeds, firsts, ids = [], [], []
        for _ in range(replies):
            chat.forget()  # a cold prompt each time: nothing of it held in the cache
            chat.reply(history, message, gen)
            speeds.append(chat.last["tokens_per_s"] or 0.0)
            firsts.append(chat.last["first_token_s"])
            ids.append(chat.last["ids"])
        cache = (" static cache" + (", compiled" if cuda else "")) if chat.compiled else ""
        if decoder == "replay":
            side = ", independent ones side by side" if chat.side_operations else ""
            cache = " the model's kernels replayed from CUDA graphs" + side
        rows.append(dict(path=f"panel (Chat.stream, {decoder}){cache}",
                         tps=speeds, first=min(firsts), warmup=chat.warmup_s, peak=peak(), fallback=chat.fallback,
                         same=len({tuple(x) for x in ids}) == 1, ids=ids[0]))
        if chat.compiled and decoder == "loop":  # the same long message as the third turn of a real conversation
            chat.forget()
            said = []
            for earlier, _ in history:
                chat.reply(said, earlier, gen)
                said.append((earlier, chat.tokenizer.decode(chat.last["ids"], skip_special_tokens=True)))
            chat.reply(said, TURN, gen)  # the history is most of this prompt, as in a chat
            rows[-1].update(conversation=chat.last["first_token_s"], conversation_prompt=chat.last["prompt_tokens"],
                            conversation_reused=chat.last["reused_tokens"])
    written = [r for r in rows[1:] if "ids" in r]
    if len(written) > 1:  # greedy: every decoder must write the same tokens
        written[-1]["same_as_first_decoder"] = written[-1]["ids"] == written[0]["ids"]
    for row in rows:
        row.update(prompt_tokens=n_prompt, new_tokens=new_tokens, words=words)
    chat.close()
    return rows


def built_here(model: str) -> bool:
    """A random shape built here (model_for), not a trained model."""
    return Path(model).name.endswith("-random")


def words_only(chat) -> int:
    """Limit a random model's head to whole words with a leading space whose text reads back as the same single token
    (a real model's text reads back as its ids; a random model's byte pieces do not): their rows of the output
    weights stay, the others become zero, so their logits are 0 and greedy decoding, which always finds a word
    scoring above 0 among thousands, never picks them. The number of words kept."""
    import torch

    tokenizer = chat.tokenizer
    head = chat.model.get_output_embeddings().weight
    if type(head.data) is not torch.Tensor:
        raise SystemExit(f"the head is stored as {type(head.data).__name__}: cannot limit it to words")
    keep = torch.zeros(head.shape[0], dtype=torch.bool)
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), head.shape[0]))))):
        word = (piece or "")[1:]
        if piece and piece[0] == "\u0120" and len(word) > 1 and word.isascii() and word.isalpha() \
                and tokenizer(" " + word, add_special_tokens=False)["input_ids"] == [i]:
            keep[i] = True
    with torch.no_grad():
        head[~keep.to(head.device)] = 0
    return int(keep.sum())


def pair(model: str, precision: str, replies: int, new_tokens: int) -> dict:
    """Side by side, as the Chat tab compares two models: two copies of the model on this machine's GPU. The first
    answers alone before the second loads; then the two answer one reply after the other, as the tab does."""
    from core.chat import Chat
    from core.config import GenerationConfig

    chats = [Chat(), Chat()]
    chats[0].load(model, precision=precision)
    history, message = prompt(chats[0].tokenizer)
    gen = GenerationConfig(temperature=0, max_new_tokens=new_tokens, repetition_penalty=1.0)

    def reply(chat: Chat, into: list) -> None:
        chat.forget()
        chat.reply(history, message, gen)
        into.append((chat.last["tokens_per_s"] or 0.0, chat.last["first_token_s"], chat.last["ids"]))

    alone: list = []
    for _ in range(replies):
        reply(chats[0], alone)
    chats[1].load(model, precision=precision)
    turns: list[list] = [[], []]
    for _ in range(replies):
        for chat, into in zip(chats, turns, strict=True):
            reply(chat, into)
    same = len({tuple(x[2]) for pane in (alone, *turns) for x in pane}) == 1
    out = dict(alone=[x[0] for x in alone], turns=[[x[0] for x in pane] for pane in turns],
               first=[min(x[1] for x in pane) for pane in turns],
               warmup=[chat.warmup_s for chat in chats],
               # not warmed up (the CPU): replies take generate's plain path whatever the decoder
               decoder=[chat.decoder if chat.compiled else "generate" for chat in chats],
               fallback=[chat.fallback for chat in chats], same=same)
    for chat in chats:
        chat.close()
    return out


def model_for(shape: str, tokenizer: str | None, work: Path) -> str:
    if shape == "135m":
        from core import models

        return str(models.embedded())
    from speed import build  # bench/speed.py: a random Llama of the shape, saved with the tokenizer

    folder = work / f"{shape}-random"
    if not (folder / "config.json").is_file():
        if not tokenizer:
            raise SystemExit(f"--tokenizer is needed to build the {shape} shape")
        build(shape, tokenizer, folder)
    return str(folder)


def versions() -> str:
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return f"{device}; torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="135m,7b,13b")
    p.add_argument("--precisions", default="16bit,4bit,int4", help="GPU only; the CPU runs float32")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for the 7b and 13b shapes")
    p.add_argument("--replies", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--work", default="/tmp/chat-speed")
    p.add_argument("--inductor", default="", help="KEY=VALUE,... torch._inductor.config settings to try (a variant row)")
    p.add_argument("--decoders", default="replay,loop,generate", help="the panel's decoders to measure (core.chat.DECODERS)")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--side-by-side", action="store_true",
                   help="instead: two copies of each model side by side, as the Chat tab compares two models")
    p.add_argument("--pair", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.pair:
        print(json.dumps(pair(a.pair[0], a.pair[1], a.replies, a.new_tokens)))
        return
    if a.one:
        if a.inductor:
            import torch._inductor.config as inductor

            for item in a.inductor.split(","):
                key, value = item.split("=")
                obj, *path = key.split(".")
                target = inductor if not path else getattr(inductor, obj)
                setattr(target, path[-1] if path else obj, {"True": True, "False": False}.get(value, value))
        print(json.dumps(measure(a.one[0], a.one[1], a.replies, a.new_tokens, tuple(a.decoders.split(",")))))
        return
    import torch

    cuda = torch.cuda.is_available()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    shapes = a.shapes.split(",") if cuda else ["135m"]
    precisions = a.precisions.split(",") if cuda else ["float32"]
    print(f"# {versions()}\n# {' '.join(sys.argv)}")
    if a.side_by_side:
        side_by_side(a, shapes, precisions, cuda, work)
        return
    print("\n| shape | precision | path | tokens/s per reply | first token (500-token prompt) | first token in a "
          "conversation (prompt, of it held) | warm-up | GPU peak |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, precision, model in each(a, shapes, precisions, work):
        done = child(a, "--one", model, precision if cuda else "auto", work / f"{shape}-{precision}.log",
                     "--inductor", a.inductor, "--decoders", a.decoders)
        if done.returncode:
            tail = " ".join(done.stderr.strip().splitlines()[-1:])[:150]
            print(f"| {shape} | {precision} | failed: {tail} | | | | | |")
            continue
        for r in json.loads(done.stdout.strip().splitlines()[-1]):
            tps = ", ".join(f"{x:.1f}" for x in r["tps"])
            warm = "—" if r["warmup"] is None else f"{r['warmup']:.1f} s"
            peak = "—" if r["peak"] is None else f"{r['peak']:.1f} GiB"
            note = f" (fallback: {r['fallback']})" if r.get("fallback") else ""
            if r.get("same_as_first_decoder") is False:
                note += " (NOT the first decoder's tokens)"
            variant = f" [{a.inductor}]" if a.inductor else ""
            talk = (f"{r['conversation']:.2f} s ({r['conversation_prompt']} tokens, {r['conversation_reused']} held)"
                    if r.get("conversation") is not None else "—")
            if r.get("words"):
                note += f" (head: {r['words']} words)"
            first = "—" if r["first"] is None else f"{r['first']:.2f} s"
            print(f"| {shape} | {precision} | {r['path']}{variant}{note} | {tps} | {first} "
                  f"({r['prompt_tokens']} tokens) | {talk} | {warm} | {peak} |", flush=True)


def each(a, shapes: list[str], precisions: list[str], work: Path):
    """(shape, precision, model folder) of every row group, the model built once per shape."""
    for shape in shapes:
        model = model_for(shape, a.tokenizer, work)
        for precision in precisions:
            yield shape, precision, model


def child(a, how: str, model: str, precision: str, log: Path, *more: str) -> subprocess.CompletedProcess:
    """One process per model and precision (a clean GPU and its own peak); its output kept in `log`."""
    done = subprocess.run([sys.executable, __file__, how, model, precision, "--replies", str(a.replies),
                           "--new-tokens", str(a.new_tokens), *more], capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    return done


def side_by_side(a, shapes: list[str], precisions: list[str], cuda: bool, work: Path) -> None:
    print("\n| shape | precision | decoder | tokens/s, A alone | tokens/s side by side, one reply after the other "
          "(A; B) | first token | warm-up (A, B) | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, precision, model in each(a, shapes, precisions, work):
        done = child(a, "--pair", model, precision if cuda else "auto", work / f"{shape}-{precision}-pair.log")
        if done.returncode:
            print(f"| {shape} | {precision} | failed: {done.stderr[-1500:]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        alone = ", ".join(f"{x:.1f}" for x in r["alone"])
        turns = "; ".join(", ".join(f"{x:.1f}" for x in pane) for pane in r["turns"])
        warm = ", ".join("—" if x is None else f"{x:.0f} s" for x in r["warmup"])
        print(f"| {shape} | {precision} | {'/'.join(r['decoder'])} | {alone} | {turns} | {max(r['first']):.2f} s | "
              f"{warm} | {r['same']}{' fallback: ' + str(r['fallback']) if any(r['fallback']) else ''} |", flush=True)


if __name__ == "__main__":
    main()
