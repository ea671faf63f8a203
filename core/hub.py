"""`python -m core download`: a model from a hub id into workspace/models, with progress, resumable.

With `--kind dataset` the hub id names a dataset instead: it is streamed, never downloaded whole,
and a seeded random sample of its rows is saved as a JSON lines file in the workspace's uploads,
where the Data tab (core.data.prepare) takes it like any other data file.

The sources are Hugging Face, a mirror of it (the same protocol at another address, such as
https://hf-mirror.com) and ModelScope, each through its own client library. Files land in a
hidden folder beside the final one (`.NAME.part`), which the clients resume from after an
interruption; the model appears under its name only once every file is there at its full size.
Safetensors only, unless the user allows pickle weights (.bin), which are then read with
`weights_only` by transformers.

A watcher thread reports bytes done, the total, the speed and the time left in the job's
status.json, from the bytes on disk: the same for both clients.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

from core import models, paths, status
from core.config import DownloadConfig, from_argv
from core.errors import Text, UserError

log = logging.getLogger("qlora_studio.hub")
PICKLE = ("*.bin", "*.pt", "*.pth", "*.ckpt")
EVERY = 0.5  # seconds between progress reports


def cli(argv: list[str]) -> int:
    """`python -m core download --repo OWNER/NAME [--source S] [--endpoint URL] [--out DIR] [--allow-bin]`."""
    cfg = from_argv(DownloadConfig, argv, "python -m core download", "Download a model from a hub id.")
    out = target(cfg)
    folder = job_folder(out)  # made by the panel; by hand, the download only prints
    job = status.Status(folder if folder.is_dir() else None, state="running", message=cfg.repo)

    def stop(signum, frame):
        # Leave at once: the partial files stay for a later resume (a thread pool would finish its files first).
        job.last_word(log, state="stopped", ended=time.time(), speed=None, eta=None,
                      hint=Text("start the same download again to continue where it stopped",
                                "再次开始同一个下载即可从中断处继续") if cfg.kind == "model"
                      else Text("start it again to take a new sample", "请重新开始以抽取新的样本"))
        print("stopped; the files downloaded so far are kept · 已停止；已下载的文件会保留", flush=True)
        os._exit(130)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if cfg.source == "mirror":  # datasets reads the hub's address once, when it is imported
        os.environ["HF_ENDPOINT"] = _endpoint(cfg)
    shown = [-1]

    def progress(**fields) -> None:  # the status file for the panel; a line every tenth for a terminal
        job.update(**fields)
        tenth = int((fields.get("progress") or 0) * 10)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"[{tenth * 10:3d}%] {cfg.repo}", flush=True)

    try:
        report = download(cfg, progress) if cfg.kind == "model" else sample_dataset(cfg, progress)
    except BaseException as e:
        error, hint = status.explain(e, "download")
        job.last_word(log, state="failed", error=error, hint=hint, ended=time.time(), speed=None, eta=None)
        raise
    job.update(state="finished", ended=time.time(), progress=1.0, speed=None, eta=0, report=report)
    print(json.dumps(report, ensure_ascii=False))
    return 0


def target(cfg: DownloadConfig) -> Path:
    """Where it ends up: cfg.out, or workspace/models/<the repo's name> (a dataset: data/<name>.jsonl)."""
    if cfg.out:
        return Path(cfg.out).expanduser().resolve()
    if cfg.kind == "dataset":
        return paths.child(paths.uploads(), f"{cfg.repo.split('/')[-1]}-{cfg.rows}.jsonl", "name")
    return paths.child(paths.models(), cfg.repo.split("/")[-1], "name")


def job_folder(out: str | Path) -> Path:
    """Where a download into `out` started by the panel keeps its status.json and log."""
    out = Path(out).expanduser().resolve()
    return out.with_name(f".{out.name}.job")


def part(out: Path) -> Path:
    """Where a download is written until it is whole: a model's folder (kept between attempts, for resuming), or
    a dataset sample's file."""
    return out.with_name(f".{out.name}.part")


# ---- the download ----------------------------------------------------------------------------
def download(cfg: DownloadConfig, report=None) -> dict:
    """Download cfg.repo into its folder; `report(**fields)` gets the progress. Returns the report."""
    say = report or (lambda **fields: None)
    cfg.check()
    out = target(cfg)
    if out.exists():
        raise UserError(f"out: {out} already exists; choose another name for the model", field="out",
                        zh=f"out：{out} 已存在，请给模型换个名字")
    files, revision = listing(cfg)
    chosen = choose(cfg, files)
    total = sum(files[name] for name in chosen)
    partial = part(out)
    partial.mkdir(parents=True, exist_ok=True)
    _check_room(partial, total - _bytes_on_disk(partial))
    say(state="running", bytes_total=total, message=f"{cfg.repo} · {len(chosen)} files")
    started = time.time()
    watching = threading.Event()
    watcher = threading.Thread(target=_watch, args=(partial, total, say, watching), daemon=True)
    watcher.start()
    try:
        _fetch(cfg, revision, chosen, files, partial)
    except UserError:
        raise
    except Exception as e:  # the network went away half-way, say: what is on disk stays for a resume
        raise UserError(f"repo: {cfg.repo}: the download broke off ({_short(e)}); start it again to continue "
                        "where it stopped", field="repo",
                        zh=f"repo：{cfg.repo}：下载中断了（{_short(e)}）；再次开始即可从中断处继续") from None
    finally:
        watching.set()
        watcher.join()
    missing = [n for n in chosen if not (partial / n).is_file() or (partial / n).stat().st_size != files[n]]
    if missing:
        raise UserError(f"repo: {cfg.repo}: {missing[0]} did not arrive whole; start the download again to "
                        "continue where it stopped", field="repo",
                        zh=f"repo：{cfg.repo}：{missing[0]} 没有完整下载；再次开始下载即可从中断处继续")
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # the client's resume notes: not part of the model
    seconds = round(time.time() - started, 1)
    result = {"path": str(out), "repo": cfg.repo, "source": cfg.source, "revision": revision,
              "files": len(chosen), "size_bytes": total, "seconds": seconds}
    models.write_record(partial, {"source": f"{cfg.source}:{cfg.repo}", "download": result})
    os.rename(partial, out)
    say(bytes_done=total, message=f"{cfg.repo} → {out}")
    return result


def listing(cfg: DownloadConfig) -> tuple[dict[str, int], str | None]:
    """({file: size} of the repo, the revision to fetch), or a one-line reason it cannot be had."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") and cfg.source != "modelscope":
        raise UserError("source: downloads are switched off on this machine (HF_HUB_OFFLINE); put the model "
                        "folder in workspace/models instead", field="source",
                        zh="source：本机已关闭下载（HF_HUB_OFFLINE）；请把模型文件夹放到 workspace/models 中")
    if cfg.source == "modelscope":
        return _modelscope_listing(cfg)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=_endpoint(cfg)).model_info(cfg.repo, files_metadata=True, timeout=20)
    except GatedRepoError:
        raise _gated(cfg) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise _missing(cfg) from None
    except Exception as e:  # no network, a wrong mirror address, a hub that is down
        raise _unreachable(cfg, e) from None
    return {s.rfilename: s.size or 0 for s in info.siblings or []}, info.sha


def _modelscope_listing(cfg: DownloadConfig) -> tuple[dict[str, int], str | None]:
    try:
        from modelscope.hub.api import HubApi
        from modelscope.hub.errors import AuthenticationError, NotExistError, PermissionDeniedError
    except ImportError:
        raise UserError("source: the modelscope package is not installed; run `pip install -r requirements.txt`, "
                        "or choose Hugging Face or a mirror", field="source",
                        zh="source：没有安装 modelscope 包；请运行 `pip install -r requirements.txt`，"
                           "或选择 Hugging Face 或镜像") from None
    try:
        entries = HubApi(endpoint=cfg.endpoint or None, timeout=20).get_model_files(cfg.repo, recursive=True)
    except NotExistError:  # 404
        raise _missing(cfg) from None
    except (AuthenticationError, PermissionDeniedError):  # 401 without a token, 403 with one that has no access
        raise _gated(cfg) from None
    except Exception as e:  # no network, a wrong address (the client retried for a few seconds first)
        raise _unreachable(cfg, e) from None
    files = {e.get("Path") or e.get("Name"): int(e.get("Size") or 0) for e in entries if e.get("Type") != "tree"}
    # The listing names each folder too, as an entry of size 0 with no type: keep the files.
    folders = {"/".join(p.split("/")[:i]) for p in files if p for i in range(1, p.count("/") + 1)}
    return {k: v for k, v in files.items() if k and k not in folders}, None


def choose(cfg: DownloadConfig, files: dict[str, int]) -> list[str]:
    """The files to fetch: config, tokenizer and safetensors weights (pickle weights only if allowed)."""
    def matches(name, patterns):
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    # Only the top folder: a repo's sub-folders hold other formats (onnx/, gguf/, original/).
    top = {n: s for n, s in files.items() if "/" not in n}
    if "config.json" not in top:
        raise UserError(f"repo: {cfg.repo} has no config.json: it is not a transformers model (a GGUF-only or "
                        "dataset repo, say); choose another repo", field="repo",
                        zh=f"repo：{cfg.repo} 没有 config.json，不是 transformers 模型（比如只有 GGUF 或是数据集仓库）；"
                           "请换一个仓库")
    wanted = [n for n in top if matches(n, models.WEIGHT_FILES)]
    if any(n.endswith(".safetensors") for n in wanted):
        return sorted(wanted)
    pickled = [n for n in top if matches(n, PICKLE)]
    if not pickled:
        raise UserError(f"repo: {cfg.repo} has no weight files (.safetensors) to download", field="repo",
                        zh=f"repo：{cfg.repo} 没有可下载的权重文件（.safetensors）")
    if not cfg.allow_bin:
        raise UserError(f"repo: {cfg.repo} has only pickle weights ({pickled[0]}), which can run code when read; "
                        "tick 'Allow .bin weights' to download them anyway (they are read with weights_only)",
                        field="allow_bin",
                        zh=f"repo：{cfg.repo} 只有 pickle 权重（{pickled[0]}），读取时可能执行代码；"
                           "如仍要下载，请勾选“允许 .bin 权重”（读取时会用 weights_only）")
    return sorted(wanted + [n for n in pickled if n.endswith(".bin")])


def _fetch(cfg: DownloadConfig, revision: str | None, names: list[str], files: dict[str, int], part: Path) -> None:
    if cfg.source == "modelscope":
        from modelscope.hub.snapshot_download import snapshot_download as ms_download

        # cache_dir holds only the client's lock files here: inside the part folder, not in the user's home.
        ms_download(cfg.repo, local_dir=str(part), cache_dir=str(part / ".cache"), allow_patterns=names,
                    endpoint=cfg.endpoint or None)
        return
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    # The client writes what arrives every chunk: 1 MiB keeps the progress on disk current.
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, 2**20)
    headers = build_hf_headers()  # HF_TOKEN, for gated repos
    # File by file into NAME.incomplete, continued from its size after an interruption (snapshot_download
    # starts a cut-off file again from zero), at the revision listed: the files counted are the files fetched.
    for name in names:
        final, partial = part / name, part / f"{name}.incomplete"
        if final.is_file() and final.stat().st_size == files[name]:
            continue
        have = partial.stat().st_size if partial.is_file() else 0
        if have > files[name]:  # the repo changed under a stopped download: start this file again
            partial.unlink()
            have = 0
        with open(partial, "ab") as f:
            http_get(hf_hub_url(cfg.repo, name, revision=revision, endpoint=_endpoint(cfg)), f, resume_size=have,
                     headers=headers, expected_size=files[name], displayed_filename=name)
        os.replace(partial, final)


def _endpoint(cfg: DownloadConfig) -> str | None:
    """The hub's address: the mirror's for a mirror, else HF_ENDPOINT or the Hugging Face default."""
    return cfg.endpoint.rstrip("/") if cfg.source == "mirror" else None


# ---- a dataset, streamed and sampled ----------------------------------------------------------
WINDOW = 10_000  # rows the stream is shuffled in: the sample comes from the shuffled files' first rows


def sample_dataset(cfg: DownloadConfig, report=None) -> dict:
    """Stream cfg.repo's train split, keep cfg.rows rows picked at random, and write them as JSON lines.

    From Hugging Face or a mirror, through datasets' streaming. From ModelScope (see _modelscope_rows),
    the data files are streamed one after another through the modelscope client and reading stops
    once the sample is complete. Either way the rows pass through a seeded shuffle window of WINDOW rows.
    """
    say = report or (lambda **fields: None)
    cfg.check()
    out = target(cfg)
    if out.exists():
        raise UserError(f"name: {out.name} already exists in {out.parent}; choose another name", field="name",
                        zh=f"name：{out.parent} 中已有 {out.name}，请换个名字")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") and cfg.source != "modelscope":
        raise UserError("source: downloads are switched off on this machine (HF_HUB_OFFLINE); upload the data "
                        "file in the Data tab instead", field="source",
                        zh="source：本机已关闭下载（HF_HUB_OFFLINE）；请在“数据”页上传数据文件")
    say(state="running", message=f"{cfg.repo} · streaming", progress=0.0)
    tmp = part(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in (_modelscope_rows(cfg) if cfg.source == "modelscope" else _hf_rows(cfg)):
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                kept += 1
                if kept % 100 == 0:
                    say(progress=round(kept / cfg.rows, 4), message=f"{cfg.repo} · {kept} rows")
    except BaseException:  # nothing half-written is left beside the data files
        tmp.unlink(missing_ok=True)
        raise
    if not kept:
        tmp.unlink()
        raise UserError(f"repo: {cfg.repo} has no rows in its train split", field="repo",
                        zh=f"repo：{cfg.repo} 的 train 部分没有数据行")
    os.replace(tmp, out)
    result = {"path": str(out), "repo": cfg.repo, "source": cfg.source, "rows": kept, "seed": cfg.seed,
              "size_bytes": out.stat().st_size}
    say(progress=1.0, message=f"{cfg.repo} → {out} · {kept} rows")
    return result


def _hf_rows(cfg: DownloadConfig):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    datasets.logging.set_verbosity_error()
    try:
        stream = datasets.load_dataset(cfg.repo, split="train", streaming=True)
        yield from stream.shuffle(seed=cfg.seed, buffer_size=WINDOW).take(cfg.rows)
    except DatasetNotFoundError as e:
        raise (_gated(cfg) if "gated" in str(e).lower() else _missing(cfg)) from None
    except ValueError as e:  # no train split, or files datasets cannot read
        raise UserError(f"repo: {cfg.repo} cannot be streamed as a dataset ({_short(e)})", field="repo",
                        zh=f"repo：{cfg.repo} 无法作为数据集流式读取（{_short(e)}）") from None
    except OSError as e:  # the network went away: nothing kept, start again
        raise _unreachable(cfg, e) from None


DATA_FILES = (".jsonl", ".json", ".csv")
SPLITS = ("train", "test", "validation", "valid", "dev", "eval")


def _modelscope_rows(cfg: DownloadConfig):
    """cfg.rows rows of a ModelScope dataset repo, picked at random with cfg.seed.

    What is read: the repo's file listing, then its data files (JSON lines, JSON arrays, CSV; those
    named for another split than train are left out when the repo has train files), in an order
    shuffled with the seed, each streamed from its start and only as far as the rows needed: once
    cfg.rows rows have left the shuffle window, the download is closed. At most the files' first
    WINDOW + cfg.rows rows are read; a window bigger than the dataset holds all of it.
    """
    import random

    try:
        from modelscope_hub.api import HubApi
        from modelscope_hub.errors import AuthenticationError, NotExistError, PermissionDeniedError
    except ImportError:
        raise UserError("source: the modelscope package is not installed; run `pip install -r requirements.txt`, "
                        "or choose Hugging Face or a mirror", field="source",
                        zh="source：没有安装 modelscope 包；请运行 `pip install -r requirements.txt`，或改用 Hugging Face 或镜像") from None
    api = HubApi(endpoint=cfg.endpoint or None)
    try:
        entries = api.list_repo_files(cfg.repo, "dataset")
        names = sorted(e.path for e in entries if e.type != "tree" and e.path.lower().endswith(DATA_FILES))
        def split(name: str) -> str | None:
            words = set(re.split(r"[^a-z]+", name.lower()))
            return next((s for s in SPLITS if s in words), None)
        if any(split(n) == "train" for n in names):
            names = [n for n in names if split(n) in ("train", None)]
        if not names:
            raise UserError(f"repo: {cfg.repo} has no data files ModelScope can stream (JSON lines, JSON or CSV)",
                            field="repo", zh=f"repo：{cfg.repo} 没有可从 ModelScope 流式读取的数据文件（JSON lines、JSON 或 CSV）")
        rng = random.Random(cfg.seed)
        rng.shuffle(names)
        window: list[dict] = []
        given = 0
        for name in names:
            response = api.legacy.download_stream(cfg.repo, "dataset", name)
            try:
                for row in _rows_of(name, response.iter_content(2**16)):
                    if len(window) < WINDOW:
                        window.append(row)
                        continue
                    i = rng.randrange(WINDOW)
                    yield window[i]
                    window[i] = row
                    given += 1
                    if given >= cfg.rows:
                        return
            finally:
                response.close()
        rng.shuffle(window)
        yield from window[:cfg.rows - given]
    except NotExistError:  # 404
        raise _missing(cfg) from None
    except (AuthenticationError, PermissionDeniedError):  # 401 without a token, 403 with one that has no access
        raise _gated(cfg) from None
    except UserError:
        raise
    except ValueError as e:  # a file that is not what its name says
        raise UserError(f"repo: {cfg.repo} cannot be streamed as a dataset ({_short(e)})", field="repo",
                        zh=f"repo：{cfg.repo} 无法作为数据集流式读取（{_short(e)}）") from None
    except Exception as e:  # no network, a wrong address, the connection cut
        raise _unreachable(cfg, e) from None


def _rows_of(name: str, chunks):
    """The rows (dicts) of one data file arriving in byte chunks: JSON lines, a JSON array of objects, or CSV."""
    import codecs
    import csv

    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    texts = (decoder.decode(c) for c in chunks)
    if name.lower().endswith(".csv"):
        def lines():
            rest = ""
            for text in texts:
                rest += text
                *whole, rest = rest.split("\n")
                yield from (line + "\n" for line in whole)
            if rest:
                yield rest
        yield from csv.DictReader(lines())
        return
    parse = json.JSONDecoder().raw_decode
    buffer, at, ended = "", 0, False
    while True:
        while at < len(buffer) and buffer[at] in " \t\r\n,[]":  # between rows, in JSON lines or an array
            at += 1
        if at == len(buffer):
            buffer, at = "", 0
            if ended:
                return
        else:
            try:
                row, at = parse(buffer, at)
            except json.JSONDecodeError:
                if ended:
                    raise ValueError(f"{name}: not JSON lines or a JSON array of objects near {buffer[at:at + 40]!r}") from None
            else:
                if not isinstance(row, dict):
                    raise ValueError(f"{name}: a row is not a JSON object ({str(row)[:40]!r})")
                yield row
                continue
        text = next(texts, None)
        if text is None:
            ended = True
        else:
            buffer, at = buffer[at:] + text, 0


# ---- progress ------------------------------------------------------------------------------
def _bytes_on_disk(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # renamed from .incomplete to its name as we looked
                pass
    return total


def _watch(part: Path, total: int, say, done: threading.Event) -> None:
    """Every EVERY seconds: bytes on disk, the speed over the last few seconds, and the time left."""
    seen: list[tuple[float, int]] = []
    while True:
        now, have = time.time(), min(_bytes_on_disk(part), total)
        seen = [(t, b) for t, b in seen if now - t <= 5.0] + [(now, have)]
        speed = (have - seen[0][1]) / (now - seen[0][0]) if now > seen[0][0] else 0.0
        eta = (total - have) / speed if speed > 0 else None
        fields = dict(bytes_done=have, speed=round(speed), eta=round(eta) if eta is not None else None,
                      progress=round(have / total, 4) if total else 0.0)
        try:
            say(**fields)
        except OSError as e:  # a full disk shows up in the download itself
            log.warning("could not write the progress: %s", e)
        if done.wait(EVERY):
            return


def _check_room(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if need > 0 and free < need * 1.05:
        raise UserError(f"repo: not enough disk space in {folder.parent}: the model needs about "
                        f"{need / 2**30:.1f} GiB more, {free / 2**30:.1f} GiB are free; free some space", field="repo",
                        zh=f"repo：{folder.parent} 磁盘空间不足：模型还需约 {need / 2**30:.1f} GiB，"
                           f"只剩 {free / 2**30:.1f} GiB；请腾出空间")


# ---- reasons, one line each --------------------------------------------------------------------
def _gated(cfg: DownloadConfig) -> UserError:
    if cfg.source == "modelscope":
        return UserError(f"repo: {cfg.repo} is private or needs a login on {_where(cfg)}: ask for access on its page "
                         "and start the panel with your ModelScope access token in MODELSCOPE_API_TOKEN", field="repo",
                         zh=f"repo：{cfg.repo} 是私有仓库或需要在 {_where(cfg)} 登录：请在它的页面申请访问，"
                            "并在启动面板时把 ModelScope 访问令牌放进 MODELSCOPE_API_TOKEN")
    return UserError(f"repo: {cfg.repo} is gated or private: accept its terms on the hub's page and start the panel "
                     "with a read token in HF_TOKEN (MODELSCOPE_API_TOKEN for ModelScope)", field="repo",
                     zh=f"repo：{cfg.repo} 需要授权或是私有的：请在模型库页面接受条款，并在 HF_TOKEN"
                        "（ModelScope 用 MODELSCOPE_API_TOKEN）中设置读取令牌后启动面板")


def _missing(cfg: DownloadConfig) -> UserError:
    # ModelScope's client asks modelscope.cn unless told otherwise; some repos live only on the international site.
    intl = cfg.source == "modelscope" and not cfg.endpoint
    return UserError(f"repo: {cfg.repo} was not found on {_where(cfg)}; check the spelling (owner/name)", field="repo",
                     zh=f"repo：在 {_where(cfg)} 上找不到 {cfg.repo}；请检查拼写（owner/name）",
                     hint=f"a repo only on ModelScope's international site: give {MODELSCOPE_INTL} as the address"
                     if intl else None,
                     hint_zh=f"若仓库只在 ModelScope 国际站：地址填写 {MODELSCOPE_INTL}" if intl else None)


def _unreachable(cfg: DownloadConfig, e: Exception) -> UserError:
    others = "Hugging Face, or a mirror of it" if cfg.source == "modelscope" else "a mirror, or ModelScope"
    others_zh = "Hugging Face 或其镜像" if cfg.source == "modelscope" else "镜像或 ModelScope"
    return UserError(f"source: {_where(cfg)} cannot be reached ({_short(e)}); check the network, or choose another "
                     f"source ({others})", field="source",
                     zh=f"source：无法连接 {_where(cfg)}（{_short(e)}）；请检查网络，或换个来源（{others_zh}）")


MODELSCOPE_INTL = "https://www.modelscope.ai"


def _where(cfg: DownloadConfig) -> str:
    if cfg.source == "modelscope" and cfg.endpoint:
        return f"ModelScope ({cfg.endpoint.rstrip('/')})"
    return {"huggingface": "Hugging Face", "modelscope": "ModelScope"}.get(cfg.source, cfg.endpoint or "the mirror")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
