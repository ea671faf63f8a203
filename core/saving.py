"""Writing a run's folders so that a crash or a full disk never leaves half of one in place.

A checkpoint or an adapter is written into a hidden temporary folder and renamed into place
only when complete: a process killed mid-save leaves a temporary folder that nothing reads,
never a `checkpoint-N` or `adapter` that looks usable. Resuming checks a checkpoint's files
anyway, because runs written before this rule (or by another tool) may hold broken ones.

No torch here: the resume check runs before the heavy imports, to refuse quickly.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
from pathlib import Path

from core import logs, models
from core.errors import Text, UserError

log = logging.getLogger("qlora_studio.train")

# Room beyond the weights for tokenizer files, configs, the trainer state and the filesystem.
MARGIN = 100 * 2**20
DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# safetensors raises its own error type with the OS error only in its text (Rust's words or the OS's).
DISK_WORDS = {"No space left on device": "no space left on device", "StorageFull": "no space left on device",
              "File too large": "file too large", "FileTooLarge": "file too large",
              "Disk quota exceeded": "disk quota exceeded"}
START_HINT = Text("free some disk space (or choose a run folder on a disk with more room), then start the run again",
                  "请腾出磁盘空间（或把运行文件夹放到空间更大的磁盘上），然后重新开始运行")
RESUME_HINT = Text("free some disk space, then press Resume: the last checkpoint is kept",
                   "请腾出磁盘空间，然后点“继续”：最后一个检查点已保留")
RESTART_HINT = Text("free some disk space, then start the run again (it had no checkpoint to resume from)",
                    "请腾出磁盘空间，然后重新开始运行（没有可继续的检查点）")


# ---- disk space --------------------------------------------------------------------------
def free_bytes(folder: Path) -> int:
    """Free space for an unprivileged user on the filesystem that holds folder (or its nearest parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def ensure_space(folder: Path, need: int, hint: str | None = None) -> None:
    """Refuse to start writing `need` bytes (plus a margin) into folder when the disk cannot hold them."""
    need += MARGIN
    free = free_bytes(folder)
    if free < need:
        raise UserError(f"disk full: about {size(need)} needed in {folder}, {size(free)} free",
                        zh=f"磁盘已满：{folder} 约需 {size(need)}，只剩 {size(free)}", hint=hint or RESUME_HINT)


def is_disk_full(exc: BaseException) -> bool:
    """Whether exc says the disk (or a file size limit) has no room left."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return True
    return any(words in str(exc) for words in DISK_WORDS)


def disk_error(exc: BaseException, what: str, hint: str) -> UserError:
    """A failed save in words: 'disk full while saving X (no space left on device)'."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    why = next((words for key, words in DISK_WORDS.items() if key in text), text.splitlines()[0][:200])
    return UserError(f"disk full while saving {what} ({why})", zh=f"保存 {what} 时磁盘已满（{why}）", hint=hint)


# ---- folders that appear whole or not at all ----------------------------------------------
def publish(tmp: Path, final: Path) -> None:
    """Rename the complete folder tmp to final, replacing an older final (a re-saved step, a resumed run's adapter)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_folder(final: Path, write) -> Path:
    """Call write(tmp) on a fresh hidden sibling of final, then rename it to final; on failure leave nothing."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed mid-save
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # also gives back the space a full disk needs
        raise
    return final


# ---- which checkpoint to resume from ------------------------------------------------------
def step_of(checkpoint: Path) -> int:
    try:
        return int(checkpoint.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def problem(checkpoint: Path) -> str | None:
    """Why checkpoint cannot be resumed from (in words), or None when its files are whole."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (OSError, ValueError):
        return "trainer_state.json is empty or damaged"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json is damaged"
    try:
        json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "adapter_config.json is missing or damaged"
    for file in ["adapter_model.safetensors"] + sorted(p.name for p in checkpoint.glob("*.safetensors")):
        why = _safetensors_problem(checkpoint / file)
        if why:
            return f"{file} {why}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A cheap whole-file check: the header parses and the file is as long as the header says."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "is empty" if not head else "is cut short"
            length = struct.unpack("<Q", head)[0]
            if 8 + length > path.stat().st_size:
                return "is cut short"
            header = json.loads(f.read(length))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return "is cut short" if path.stat().st_size < 8 + length + max(ends, default=0) else None
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return "is damaged"


def newest_checkpoint(run: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint whose files are whole, and the newer ones skipped with the reason."""
    found = sorted((p for p in (Path(run) / "checkpoints").glob("checkpoint-*") if p.is_dir()),
                   key=step_of, reverse=True)
    skipped = []
    for checkpoint in found:
        why = problem(checkpoint)
        if why is None:
            return checkpoint, skipped
        skipped.append((checkpoint, why))
    return None, skipped


def resume_point(run: Path, tidy: bool = True) -> tuple[Path, int, str | None]:
    """(checkpoint, its step, a warning naming the skipped ones); broken newer checkpoints are removed if `tidy`.

    Of the processes of a data-parallel run, rank 0 alone tidies; every rank picks the same checkpoint.
    """
    checkpoint, skipped = newest_checkpoint(run)
    if checkpoint is None:  # checked before the run's lock was taken; gone since
        raise UserError(f"resume: {run} has no complete checkpoint to resume from", field="resume",
                        zh=f"resume：{run} 没有可用于继续训练的完整检查点")
    if not tidy:
        skipped = []
    for broken, why in skipped:
        # Training repeats their steps from the older checkpoint; kept, they would confuse rotation.
        log.warning("skipped %s: %s; removed, its steps are trained again", broken.name, why,
                    extra=logs.zh(f"跳过了 {broken.name}：{why}；已删除，它的步数会重新训练"))
        shutil.rmtree(broken, ignore_errors=True)
    for leftover in (run / "checkpoints" / ".staging", run / ".adapter.tmp") if tidy else ():  # a save cut short by a kill
        shutil.rmtree(leftover, ignore_errors=True)  # the room it takes may be what the disk lacks
    step = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    log.info("resuming from %s (step %d)", checkpoint.name, step, extra=logs.zh(f"从 {checkpoint.name} 继续训练（第 {step} 步）"))
    if not skipped:
        return checkpoint, step, None
    warning = Text("; ".join(f"{b.name} was skipped ({why})" for b, why in skipped) + f"; resumed from {checkpoint.name}",
                   "；".join(f"跳过了 {b.name}（{why}）" for b, why in skipped) + f"；从 {checkpoint.name} 继续训练")
    return checkpoint, step, warning


def progress_so_far(run: Path, checkpoint: Path | None) -> dict:
    """Status fields a resumed run starts from, so a resume that fails early does not read step 0 of 0, and its clock
    goes on from the time it has trained so far."""
    if checkpoint is None:
        return {}
    from core import status

    before = status.read(run)
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    adapter = run / "adapter"
    return {"step": before.get("step") or state.get("global_step") or 0,
            "max_steps": before.get("max_steps") or state.get("max_steps") or 0,
            "adapter": str(adapter) if (adapter / "adapter_config.json").is_file() else None,
            "elapsed_before": status.spent(run)}


# ---- the adapter ---------------------------------------------------------------------------
def save_adapter(model, tokenizer, record: dict, run: Path, weights: int) -> Path:
    """RUN/adapter: the LoRA weights (safetensors), the tokenizer and the record chat and merge read.

    Written in a hidden folder and renamed when whole, so Merge and Chat never offer half an adapter.
    """
    def write(out: Path) -> None:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        models.write_record(out, record)

    hint = RESUME_HINT if newest_checkpoint(run)[0] else RESTART_HINT
    ensure_space(run, weights, hint)
    try:
        return write_folder(run / "adapter", write)
    except Exception as e:
        if is_disk_full(e):
            raise disk_error(e, f"the adapter to {run / 'adapter'}", hint) from e
        raise
