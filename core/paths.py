"""Where things live on disk, and which paths a request from the panel may name.

The workspace (uploads, datasets, runs, merged models) and the model cache can be moved with
environment variables so that tests and several installs stay apart: QLORA_STUDIO_HOME
(default ./workspace) and QLORA_STUDIO_CACHE (default ~/.cache/qlora-studio).

The panel answers anyone who can reach its port, so every path a request names goes through
here: names become folders only inside the workspace (`child`), and reads come only from the
workspace, the model cache, the project's own assets and the folders the operator allowed at
start with `--allow-dir` (`readable`). Symlinks are resolved before the check. The command
line is the operator's own and is not restricted.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ALLOW_ENV = "QLORA_STUDIO_ALLOW"
# A hub id: owner/name, nothing that could be read as a path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
NAME = re.compile(r"[^\W][\w.\- ]*", re.UNICODE)


def home() -> Path:
    """The workspace folder: uploads, prepared datasets, runs and merged models."""
    return Path(os.environ.get("QLORA_STUDIO_HOME", "workspace")).expanduser().resolve()


def cache() -> Path:
    """Converted models (the embedded default) live here and are reused across workspaces."""
    default = Path.home() / ".cache" / "qlora-studio"
    return Path(os.environ.get("QLORA_STUDIO_CACHE", default)).expanduser().resolve()


def uploads() -> Path:
    return home() / "data"


def datasets() -> Path:
    return home() / "datasets"


def runs() -> Path:
    return home() / "runs"


def merged() -> Path:
    return home() / "merged"


def exports() -> Path:
    """GGUF exports of merged models, each in its own folder with an Ollama Modelfile."""
    return home() / "exports"


def models() -> Path:
    """Local model folders the user drops in; the panel lists them."""
    return home() / "models"


def allowed() -> list[Path]:
    """Folders outside the workspace that the operator allowed the panel to read (`--allow-dir`)."""
    raw = os.environ.get(ALLOW_ENV, "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def within(path: Path, root: Path) -> bool:
    """True if `path` is `root` or lies below it (both already resolved)."""
    return path == root or root in path.parents


def child(root: Path, name: str, field: str) -> Path:
    """The folder called `name` directly inside `root`; a name that leads anywhere else is refused."""
    name = (name or "").strip()
    if not NAME.fullmatch(name) or name.startswith(".") or len(name) > 120:
        raise UserError(f"{field}: {name!r} is not a usable name; use letters, digits, spaces, '-', '_' or '.', "
                        "without '/' and not starting with '.'", field=field,
                        zh=f"{field}：{name!r} 不能用作名称；请用字母、数字、空格、'-'、'_' 或 '.'，"
                           "不含 '/'，也不要以 '.' 开头")
    path = root.resolve() / name
    if not within(path.resolve(), root.resolve()):  # a symlink someone planted in the folder
        raise UserError(f"{field}: {name!r} points outside {root}; choose another name", field=field,
                        zh=f"{field}：{name!r} 指向 {root} 之外，请换个名字")
    return path


def readable(path: str | Path, field: str) -> Path:
    """`path` with symlinks resolved, if the panel may read it; relative paths start at the workspace."""
    raw = Path(str(path).strip()).expanduser()
    resolved = (raw if raw.is_absolute() else home() / raw).resolve()
    roots = [home(), cache(), ASSETS, *allowed()]
    if not any(within(resolved, root) for root in roots):
        raise UserError(f"{field}: {path} is outside the workspace and the folders this panel may read; put it "
                        f"under {home()} or start the panel with --allow-dir FOLDER", field=field,
                        zh=f"{field}：{path} 不在工作区，也不在本面板允许读取的文件夹中；请把它放到 {home()} 下，"
                           "或用 --allow-dir FOLDER 启动面板")
    return resolved


def inside(path: str | Path, root: Path, field: str) -> Path:
    """`path` resolved, if it lies inside `root` (a run folder in runs/, say)."""
    resolved = readable(path, field)
    if not within(resolved, root.resolve()):
        raise UserError(f"{field}: {path} is not inside {root}", field=field, zh=f"{field}：{path} 不在 {root} 内")
    return resolved


def model_spec(spec: str | None, field: str = "model") -> str:
    """A model as the panel may name it: 'default', a hub id, or a folder it may read."""
    spec = (spec or "").strip()
    if spec in ("", "default"):
        return "default"
    if HUB_ID.fullmatch(spec) and not Path(spec).exists():
        return spec
    return str(readable(spec, field))


def folders(root: Path) -> list[Path]:
    """The folders directly inside `root`; a symlink is followed only into `root` or an allowed folder."""
    if not root.is_dir():
        return []
    roots = [root.resolve(), *allowed()]
    return [p for p in root.iterdir() if p.is_dir() and any(within(p.resolve(), r) for r in roots)]


def unique(path: Path, reuse: Callable[[Path], bool] | None = None, *, file: bool = False) -> Path:
    """`path`, or `path-2`, `path-3`, … : the first that does not exist yet (or that `reuse` accepts).

    A `file` keeps its suffix at the end (`data-2.jsonl`); a folder name is taken whole (`qwen2.5-2`).
    """
    out, i = path, 2
    while out.exists() and not (reuse and reuse(out)):
        name = f"{path.stem}-{i}{path.suffix}" if file else f"{path.name}-{i}"
        out, i = path.with_name(name), i + 1
    return out


class Exists(Exception):
    """The folder `whole` was to create appeared meanwhile (made by someone else)."""


@contextmanager
def whole(final: Path) -> Iterator[Path]:
    """A private hidden folder beside `final` to write into; on a clean exit it is renamed to `final`.

    So a dataset, a merged or a converted model appears whole or not at all, and two writers at once
    never mix their files. An existing `final` is never replaced: `Exists`.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # made by someone else meanwhile
            raise Exists(final)
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
