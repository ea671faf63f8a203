"""Data preparation: an instruction file in, a training-ready dataset folder out.

The story: stream the file once (validating every row, hashing the bytes, keeping a
seeded random sample of N rows in a reservoir), render the sample with the chosen
template, count tokens with the model's tokenizer, and write

    DIR/train.jsonl     {"segments": [[text, trained], ...], "text": "..."} per row
    DIR/eval.jsonl      the same, when an eval share is asked for
    DIR/manifest.json   source + sha256, layout, seed, N, template, model, counts, statistics

into a temporary sibling folder that is renamed into place only when complete.
`python -m core prepare INPUT --out DIR ...` runs the same code as the panel.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from core import errors, models, paths, readers
from core.config import Parser, PrepareConfig, add_arguments
from core.errors import Text, UserError
from core.readers import BadRow, Dropped
from core.template import WHY, Template

MANIFEST = "manifest.json"
CONTAINERS = {"jsonl": "JSON lines", "json": "JSON array", "csv": "CSV"}
MAX_LENGTHS = 20000  # longer datasets keep only the histogram in the manifest
TOKENIZE_BATCH = 256
PREVIEW_CHARS = 2000  # the preview shows a row's beginning, never megabytes in the browser


# ---- what the panel calls ---------------------------------------------------------------
def detect(path: str | Path) -> str:
    """The layout of a data file: alpaca, sharegpt, messages or text (UserError if unknown)."""
    first_bad = None
    for i, (where, rec) in enumerate(readers.records(Path(path).expanduser())):
        if not isinstance(rec, BadRow):
            return readers.layout_of(rec, where)
        first_bad = first_bad or rec
        if i >= 20:
            break
    raise first_bad


def preview(cfg: PrepareConfig, n: int = 5) -> list[dict]:
    """The first `n` usable rows rendered as the model will see them: {text, prompt, response, where, template, template_why}."""
    cfg.check()
    tokenizer = _tokenizer(cfg.model, cfg.trust_remote_code)
    template, why = Template.choose(cfg.template, tokenizer)
    limit = readers.row_chars(cfg.max_seq_length)
    out = []
    for _, where, row in readers.rows(Path(cfg.input).expanduser(), cfg.format):
        if isinstance(row, Dropped) or (isinstance(row, BadRow) and cfg.skip_bad):
            continue
        if isinstance(row, BadRow):
            raise row
        segs = _render(template, readers.bound(row, limit)[0], tokenizer, where)
        last = max((i for i, (_, trained) in enumerate(segs) if trained), default=len(segs))
        out.append({
            "text": _shorten("".join(t for t, _ in segs)),
            "prompt": _shorten("".join(t for t, _ in segs[:last])),
            "response": _shorten("".join(t for t, _ in segs[last:])),
            "template": template.label, "template_why": why,
            "where": where,
        })
        if len(out) >= n:
            break
    return out


def _shorten(text: str, most: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= most else text[:most] + "…"


def prepare(cfg: PrepareConfig, progress: Callable[[float], None] | None = None) -> dict:
    """Sample, render and write a dataset folder; returns its manifest (counts and statistics).

    `progress`, if given, is called with the share of the file read so far (0 to 1).
    """
    cfg.check()
    src = Path(cfg.input).expanduser()
    out = _out_dir(cfg, src)
    if cfg.template.strip() not in ("auto", "seed", "chat"):
        Template.parse(cfg.template)  # a broken custom pattern is refused before the file is read
    digest = _Hash(src, progress)
    # Reading comes first and writes nothing, so a bad file leaves no trace on disk.
    picked, counts, layout = _read(src, cfg, digest)
    out = out or _out_dir(cfg, src, len(picked))
    tokenizer = _tokenizer(cfg.model, cfg.trust_remote_code)
    template, why = Template.choose(cfg.template, tokenizer)

    rng = random.Random(cfg.seed + 1)  # a second stream: the split does not move the sample
    n_eval = _eval_size(len(picked), cfg.eval_ratio)
    order = list(range(len(picked)))
    rng.shuffle(order)
    eval_idx = set(order[:n_eval])

    try:
        with paths.whole(out) as tmp:
            lengths, prompts = _write(tmp, picked, eval_idx, template, tokenizer)
            manifest = {
                "version": 1,
                "source": {"path": str(src.resolve()), "name": src.name, "sha256": digest.hexdigest(),
                           "bytes": src.stat().st_size},
                "container": readers.container(src),
                "layout": layout,
                "format": cfg.format,
                "seed": cfg.seed,
                "sample": cfg.sample,
                "eval_ratio": cfg.eval_ratio,
                "template": template.to_dict(),
                "template_why": why,
                "model": cfg.model,
                "max_seq_length": cfg.max_seq_length,
                "counts": {**counts, "kept": len(picked), "train": len(picked) - n_eval, "eval": n_eval},
                "stats": statistics(lengths, cfg.max_seq_length, prompts),
                "files": {"train": "train.jsonl", "eval": "eval.jsonl" if n_eval else None},
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "config": cfg.replace(out=str(out)).to_dict(),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    except paths.Exists:  # someone made it while we worked: still never overwrite
        raise UserError(f"{out}: the output folder already exists; choose another one",
                        zh=f"{out}：输出文件夹已存在，请换一个") from None
    except OSError as e:
        raise UserError(f"{out}: cannot create the output folder here ({e.strerror}); choose another place",
                        zh=f"{out}：无法在这里创建输出文件夹（{e.strerror}），请换个位置") from None
    manifest["path"] = str(out)
    return manifest


def read_manifest(folder: str | Path) -> dict:
    """DIR/manifest.json of a prepared dataset ({} if missing or damaged)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def list_datasets(root: str | Path | None = None) -> list[dict]:
    """Prepared dataset folders under `root` (the workspace by default), newest first."""
    root = Path(root) if root is not None else paths.datasets()
    found = []
    if not root.is_dir():
        return found
    for d in paths.folders(root):
        if d.name.startswith(".") or not (d / MANIFEST).is_file():
            continue
        m = read_manifest(d)
        if not m:
            continue
        try:
            template = Template.from_dict(m.get("template"))
        except (ValueError, UserError):
            continue  # a folder someone edited by hand: not offered rather than crashing the list
        counts = m.get("counts", {})
        found.append({
            "path": str(d), "name": d.name, "rows": counts.get("train", 0), "eval_rows": counts.get("eval", 0),
            "template": template.label, "layout": m.get("layout"), "model": m.get("model"),
            "source": m.get("source", {}).get("name"), "created": m.get("created", ""),
        })
    return sorted(found, key=lambda r: r["created"], reverse=True)


def statistics(lengths: list[int], max_seq_length: int, prompts: list[int] | None = None) -> dict:
    """Token length summary, the share of rows max_seq_length would cut, and a histogram.

    `prompts` (tokens before each row's first reply) counts the rows whose prompt alone
    fills max_seq_length: cut there, they have no reply left to learn from.
    """
    if not lengths:
        return {"tokens": {}, "cut_rows": 0, "cut_share": 0.0, "no_reply_rows": 0, "lengths": [], "histogram": {}}
    s = sorted(lengths)

    def pct(p: float) -> int:  # nearest rank: a length that some row really has
        return s[max(0, math.ceil(p / 100 * len(s)) - 1)]

    cut = sum(1 for n in s if n > max_seq_length)
    width = max(1, math.ceil((s[-1] + 1) / 20))
    bins = Counter(n // width for n in s)
    return {
        "tokens": {"mean": round(sum(s) / len(s), 1), "p50": pct(50), "p95": pct(95), "max": s[-1], "min": s[0],
                   "total": sum(s)},
        "cut_rows": cut,
        "cut_share": round(cut / len(s), 4),
        "no_reply_rows": sum(1 for n in prompts or () if n >= max_seq_length),
        "lengths": lengths if len(lengths) <= MAX_LENGTHS else [],
        "histogram": {"width": width, "starts": [b * width for b in range(max(bins) + 1)],
                      "counts": [bins.get(b, 0) for b in range(max(bins) + 1)]},
    }


# ---- the steps --------------------------------------------------------------------------
def _out_dir(cfg: PrepareConfig, src: Path, kept: int | None = None) -> Path | None:
    """The folder given (refused at once if it exists), or, with none given, a fresh name once `kept` is known."""
    if cfg.out:
        out = Path(cfg.out).expanduser().resolve()
        if out.exists():
            raise UserError(f"{out}: the output folder already exists; choose a new folder (nothing is overwritten)",
                            zh=f"{out}：输出文件夹已存在，请选择新文件夹（不会覆盖任何内容）")
        return out
    if kept is None:
        return None
    # No folder given (the panel): a fresh name in the workspace, with the rows it really holds.
    return paths.unique(paths.datasets() / f"{src.stem}-{kept if cfg.sample else 'all'}-seed{cfg.seed}")


def _read(src: Path, cfg: PrepareConfig, digest) -> tuple[list | _Again, dict, str]:
    """One pass: every row checked and counted; a seeded reservoir keeps N of the usable ones."""
    rng = random.Random(cfg.seed)
    picked: list[tuple[str, dict]] = []
    dropped: Counter = Counter()
    read = usable = long_rows = 0
    limit = readers.row_chars(cfg.max_seq_length)
    layout = ""
    for layout_, where, row in readers.rows(src, cfg.format, digest):
        read += 1
        layout = layout_ or layout
        if isinstance(row, BadRow):
            if not cfg.skip_bad:
                raise UserError(f"{row} (to skip and count broken rows instead, tick 'Skip broken rows' under "
                                "Advanced settings, or add --skip-bad on the command line)",
                                zh=f"{errors.text(row, 'zh')}（如要跳过并统计损坏的行，请在“高级设置”中勾选“跳过损坏的行”，"
                                   "或在命令行加 --skip-bad）")
            dropped[row.reason] += 1
            continue
        if isinstance(row, Dropped):
            dropped[row.reason] += 1
            continue
        usable += 1
        row, cut = readers.bound(row, limit)
        long_rows += cut
        if not cfg.sample:
            continue  # all rows: read again while writing (_Again), none kept here
        # Reservoir sampling: after the pass, every usable row had the same chance, and the
        # same seed on the same file picks the same rows, without holding the file in memory.
        if len(picked) < cfg.sample:
            picked.append((where, row))
        else:
            j = rng.randrange(usable)
            if j < cfg.sample:
                picked[j] = (where, row)
    if not usable:
        why = ", ".join(f"{r}: {n}" for r, n in dropped.most_common()) or "no rows"
        raise UserError(f"{src}: no usable rows among {read} ({why})", zh=f"{src}：{read} 行中没有可用的行（{why}）")
    if cfg.sample:
        rng.shuffle(picked)  # like random.sample: the order is random too
    else:
        picked = _Again(src, cfg.format, usable, limit)
    counts = {"read": read, "usable": usable, "dropped": dict(dropped.most_common()),
              "dropped_total": sum(dropped.values()), "long_rows_cut": long_rows, "row_chars": limit}
    return picked, counts, layout


MIN_EVAL_ROWS = 10  # below this, every row is worth more for training than for a verdict


def _eval_size(n: int, ratio: float) -> int:
    if ratio <= 0 or n < MIN_EVAL_ROWS:
        return 0
    return min(n - 1, max(1, round(n * ratio)))


def _render(template: Template, row: dict, tokenizer, where: str) -> list:
    try:
        return template.render(row, tokenizer)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a model's own chat template may refuse a conversation (jinja error)
        raise UserError(f"{where}: the model's chat template failed on this row: {e}",
                        zh=f"{Text(where).zh}：模型的对话模板处理这一行时出错：{e}") from None


def segment_ids(tokenizer, rows: list) -> list[list[list[int]]]:
    """The token ids of each segment ((text, trained) pairs) of each row, as training reads them (no special tokens;
    the BOS is the caller's). One tokenizer call for all the rows: a fast tokenizer spreads it over the cores,
    several times faster than a call per segment."""
    texts = [text for segments in rows for text, _ in segments]
    pieces = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    return [[next(pieces) for _ in segments] for segments in rows]


def _write(folder: Path, picked, eval_idx: set, template: Template, tokenizer) -> tuple[list[int], list[int]]:
    """Render every picked row into train/eval.jsonl; returns (tokens of each row, tokens before its first reply)."""
    files = {"train": (folder / "train.jsonl").open("w", encoding="utf-8")}
    if eval_idx:
        files["eval"] = (folder / "eval.jsonl").open("w", encoding="utf-8")
    # Count exactly as the trainer tokenizes: segment by segment, after one BOS where the model uses it.
    bos = 1 if models.leading_bos(tokenizer) is not None else 0
    lengths: list[int] = []
    prompts: list[int] = []
    batch: list[list] = []

    def count():
        for segs, ids in zip(batch, segment_ids(tokenizer, batch), strict=True):
            n = [len(piece) for piece in ids]
            first = next((i for i, (_, trained) in enumerate(segs) if trained), len(segs))
            lengths.append(bos + sum(n))
            prompts.append(bos + sum(n[:first]))
        batch.clear()

    try:
        for i, (where, row) in enumerate(picked):
            segs = _render(template, row, tokenizer, where)
            text = "".join(t for t, _ in segs)
            kept = {"segments": [[t, bool(b)] for t, b in segs], "text": text}
            if i in eval_idx:  # the question as the user wrote it, for the "did it learn" summary after a run
                first = (row.get("turns") or [{}])[0]
                kept["question"] = "\n".join(x for x in (first.get("instruction"), first.get("input")) if x)
            files["eval" if i in eval_idx else "train"].write(json.dumps(kept, ensure_ascii=False) + "\n")
            batch.append(segs)
            if len(batch) == TOKENIZE_BATCH:
                count()
        if batch:
            count()
    finally:
        for f in files.values():
            f.close()
    return lengths, prompts



class _Hash:
    """sha256 of the file as the reader streams it, reporting how far it got on the way."""

    def __init__(self, src: Path, progress: Callable[[float], None] | None):
        self.sha = hashlib.sha256()
        self.progress, self.done, self.next = progress, 0, 0
        self.size = max(1, src.stat().st_size) if src.is_file() else 1

    def update(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.done += len(chunk)
        if self.progress and self.done >= self.next:  # about a hundred calls per file, not one per line
            self.next = self.done + self.size // 100
            self.progress(min(1.0, self.done / self.size))

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class _Again:
    """Every usable row, read once more from the file: "all rows" holds no row in memory."""

    def __init__(self, src: Path, fmt: str, n: int, limit: int):
        self.src, self.fmt, self.n, self.limit = src, fmt, n, limit

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        seen = 0
        for _, where, row in readers.rows(self.src, self.fmt):
            if not isinstance(row, Exception):  # broken or dropped: already counted in the first pass
                seen += 1
                yield where, readers.bound(row, self.limit)[0]
        if seen != self.n:
            raise UserError(f"{self.src}: the file changed while it was being prepared; try again",
                            zh=f"{self.src}：准备过程中文件被修改了，请重试")


@functools.lru_cache(maxsize=2)
def _tokenizer(model: str, trust_remote_code: bool):
    from core.models import load_tokenizer

    return load_tokenizer(model, trust_remote_code=trust_remote_code)


# ---- command line -----------------------------------------------------------------------
def summary(m: dict) -> str:
    """The few lines the command line prints after `prepare`."""
    c, s = m["counts"], m["stats"]
    lines = [f"Read {c['read']} rows from {m['source']['name']} ({m['layout']} layout, {CONTAINERS[m['container']]})"]
    if c["dropped_total"]:
        why = ", ".join(f"{r} {n}" for r, n in c["dropped"].items())
        lines.append(f"Dropped {c['dropped_total']}: {why}")
    if c.get("long_rows_cut"):
        lines.append(f"{c['long_rows_cut']} rows were longer than {c['row_chars']:,} characters and were cut "
                     "before counting tokens")
    if m["sample"] and m["sample"] > c["usable"]:
        lines.append(f"Asked for {m['sample']} rows but only {c['usable']} are usable: all of them are kept")
    picked = f"{c['kept']} rows picked at random (seed {m['seed']})" if m["sample"] else f"all {c['kept']} usable rows"
    lines.append(f"Kept {picked}: {c['train']} train, {c['eval']} eval")
    t = s["tokens"]
    lines.append(f"Tokens per row: mean {t['mean']}, p50 {t['p50']}, p95 {t['p95']}, max {t['max']}")
    lines.append(f"{s['cut_rows']} rows ({s['cut_share']:.1%}) are longer than max_seq_length {m['max_seq_length']} "
                 "and would be cut")
    if s.get("no_reply_rows"):
        lines.append(f"{s['no_reply_rows']} of them have a prompt that alone fills max_seq_length: "
                     "no reply is left to learn from")
    lines.append(f"Template: {Template.from_dict(m['template']).label} ({WHY.get(m.get('template_why'), 'chosen')})")
    files = ", ".join(f for f in (m["files"]["train"], m["files"]["eval"], MANIFEST) if f)
    lines.append(f"Wrote {m['path']}/ ({files})")
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    """`python -m core prepare INPUT --out DIR [options]`."""
    parser = Parser(prog="python -m core prepare",
                    description="Sample and convert an instruction file into a training dataset.")
    parser.add_argument("input", help=PrepareConfig.help()["input"])
    add_arguments(parser, PrepareConfig, skip=("input",))
    cfg = PrepareConfig.from_dict(vars(parser.parse_args(argv)))
    print(summary(prepare(cfg)))
    return 0
