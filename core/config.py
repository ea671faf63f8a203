"""Every setting, as typed dataclasses with defaults and help text.

The command line, the panel and a run's `config.json` all go through these classes:
values become a config object once, and `validate()` returns messages a user
understands (empty list = fine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core import errors, gpus
from core.errors import Text, UserError, json_zh
from core.status import write_json

DEFAULT_MODEL = "default"
"""The name that means the embedded SmolLM2-135M-Instruct (see core.models)."""


def _f(default, help: str, **kw):
    """A setting: its default, its help, and optionally `choices`, or `bounds=(low, high)` with a widget `step`."""
    return field(default=default, metadata={"help": help, **kw})


class _Config:
    """Shared helpers: dict round-trips, JSON files, overrides with clear errors."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise UserError(f"{cls.__name__}: unknown setting {unknown[0]!r}", field=unknown[0],
                            zh=f"{cls.__name__}：未知的设置 {unknown[0]!r}")
        return cls(**{k: _coerce(names[k], v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return self.from_dict({**self.to_dict(), **changes})

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())  # atomic: a reader never sees half a config

    @classmethod
    def load(cls, path: str | Path):
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UserError(f"{path}: file not found", zh=f"{path}：找不到文件") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}",
                            zh=f"{path}：第 {e.lineno} 行不是有效的 JSON：{json_zh(e.msg)}") from None

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def check(self) -> None:
        """Raise the first validation message as a UserError."""
        problems = self.validate()
        if problems:
            raise UserError(problems[0])

    def validate(self) -> list[str]:
        """Every problem with these settings, one message each (empty list = fine)."""
        # A number left empty in the form: said first, before any rule compares it with something.
        empty = [Text(f"{f.name}: give a number", f"{f.name}：请填一个数字") for f in fields(self)
                 if getattr(self, f.name) is None and str(f.type) in ("int", "float")]
        if empty:
            return empty
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                out.append(Text(f"{f.name}: {value!r} is not one of {', '.join(choices)}",
                                f"{f.name}：{value!r} 不是可选值之一（{', '.join(choices)}）"))
            # nan passes every `<` test unnoticed and inf looks like a number: both would start a
            # run that fails (or never ends) only after the model has loaded.
            if isinstance(value, float) and not math.isfinite(value):
                out.append(Text(f"{f.name}: must be a finite number", f"{f.name}：必须是有限的数字"))
            elif "bounds" in f.metadata and not f.metadata["bounds"][0] <= value <= f.metadata["bounds"][1]:
                lo, hi = f.metadata["bounds"]
                out.append(Text(f"{f.name}: must be between {lo:g} and {hi:g}", f"{f.name}：必须在 {lo:g} 到 {hi:g} 之间"))
            elif f.name == "seed" and not 0 <= value < 2**32:  # what the random generators take
                out.append(Text("seed: must be between 0 and 4294967295", "seed：必须在 0 到 4294967295 之间"))
        named = {m.split(":", 1)[0] for m in out}
        # One message per setting: a nan learning rate is "not finite", not also "not between 0 and 1".
        return out + [m for m in self._rules() if m.split(":", 1)[0] not in named]

    def _rules(self) -> list[str]:
        """The checks of one kind of settings (ranges, required fields), beyond choices and finiteness."""
        return []


def _coerce(f: dataclasses.Field, v: Any) -> Any:
    """Numbers typed as strings (command line, JSON by hand) become numbers, or a clear error."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if v is None or isinstance(v, bool):
        return v
    try:
        if t.startswith("int"):
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return int(v)
        if t.startswith("float"):
            return float(v)
        if t.startswith("bool") and isinstance(v, str):
            return v.strip().lower() in ("1", "true", "yes", "on")
    except (TypeError, ValueError):
        raise UserError(f"{f.name}: {v!r} is not a valid {t.split(' ')[0]}", field=f.name,
                        zh=f"{f.name}：{v!r} 不是有效的 {t.split(' ')[0]}") from None
    return v


# ---------------------------------------------------------------------------------------
@dataclass
class PrepareConfig(_Config):
    """Turning an instruction file into a training-ready dataset folder."""

    input: str = _f("", "The data file: JSON lines, a JSON array, or CSV.")
    out: str = _f("", "Folder to write train.jsonl, eval.jsonl and manifest.json into (must not exist).")
    sample: int = _f(1000, "How many rows to pick at random (0 = all rows). The tutorial used 1000.")
    seed: int = _f(42, "The same seed picks the same rows again.")
    template: str = _f("auto", "Prompt template: auto (the model's own chat template if it has one, else seed), seed (the tutorial's ### Human: … ### Assistant: …), chat (the model's own), or a custom pattern with {instruction}, {input} and {output}.")
    eval_ratio: float = _f(0.1, "Share of the sampled rows kept apart for evaluation (0 to 0.5): after a run, the eval loss and answers to these unseen rows say whether the model learned. A dataset of fewer than 10 rows keeps them all for training.", bounds=(0, 0.5), step=0.01)
    model: str = _f(DEFAULT_MODEL, "Model whose tokenizer counts the tokens (and whose chat template is used).")
    format: str = _f("auto", "Data layout: auto, alpaca, sharegpt, messages or text.", choices=("auto", "alpaca", "sharegpt", "messages", "text"))
    max_seq_length: int = _f(512, "Longest sequence used in training; the statistics say how many rows it would cut.")
    skip_bad: bool = _f(False, "Skip rows that are broken (and count them) instead of stopping at the first one.")
    trust_remote_code: bool = _f(False, "Run code shipped with the model. Only for models you trust.")

    def _rules(self) -> list[str]:
        out = []
        if not self.input:
            out.append(Text("input: choose a data file", "input：请选择数据文件"))
        if self.sample < 0:
            out.append(Text("sample: must be 0 (all rows) or more", "sample：必须为 0（全部行）或更大"))
        if self.max_seq_length < 16:
            out.append(Text("max_seq_length: must be at least 16", "max_seq_length：至少为 16"))
        return out


MAX_STEPS = 1_000_000
"""The most updates a run may ask for: at a second an update, eleven and a half days (a typo, not a plan, above)."""
MAX_EPOCHS = 1_000
"""The most passes over the data a run may ask for: a model has its rows by heart long before."""

FP8_MODES = ("off", "backward", "all")
"""fp8_base's choices: which multiplications by the frozen 4-bit weights run in FP8 (core.fp8)."""


# ---------------------------------------------------------------------------------------
@dataclass
class TrainConfig(_Config):
    """One fine-tuning run. Saved as the run's config.json: everything needed to repeat it."""

    model: str = _f(DEFAULT_MODEL, "Base model: 'default' (embedded SmolLM2-135M-Instruct), a local folder, or a hub id.")
    data: str = _f("", "A prepared dataset folder (made by the Data tab or `python -m core prepare`).")
    out: str = _f("", "The run folder to create.")
    preset: str = _f("default", "Starting point for the settings: 'default' (fast, recommended) or 'tutorial' (the original recipe).", choices=("default", "tutorial"))
    # model loading
    quantization: str = _f("4bit", "Load the base model in 4-bit NF4 (QLoRA) or not at all ('none', plain LoRA).", choices=("4bit", "none"))
    double_quant: bool = _f(True, "Quantize the 4-bit scales too: saves about 0.4 bit per weight.")
    compute_dtype: str = _f("auto", "Number format for the math: auto (bf16 where the GPU supports it, fp32 on CPU), bfloat16, float16 or float32.", choices=("auto", "bfloat16", "float16", "float32"))
    trust_remote_code: bool = _f(False, "Run code shipped with the model. Only for models you trust.")
    gpus: str = _f("", "GPUs to train on, by their numbers in the GPU panel, e.g. 0,1; empty = the first GPU. With two or more, each GPU runs its own copy of the model and they share every update (data-parallel): the settings still describe one update.")
    # LoRA
    lora_r: int = _f(64, "LoRA rank: bigger learns more and uses more memory.")
    lora_alpha: int = _f(16, "LoRA scale (alpha); the update is scaled by alpha / r.")
    lora_dropout: float = _f(0.1, "Dropout on the LoRA inputs, against over-fitting (0 to 0.5).")
    target_modules: str = _f("default", "Layers that get LoRA: 'default' (the model's usual, q_proj and v_proj for Llama), 'all-linear', or names separated by commas.")
    # optimisation
    learning_rate: float = _f(3.4e-4, "How big each update is. 2e-4 is usual for LoRA on unpacked rows; the default preset uses 3.4e-4 on a GPU because its packed updates hold about 1.7x the tokens, and 1e-3 on a CPU, where it trains a smaller LoRA for fewer updates.")
    lr_scheduler: str = _f("linear", "How the learning rate changes over the run.", choices=("linear", "cosine", "constant", "constant_with_warmup"))
    warmup_ratio: float = _f(0.0, "Share of the steps during which the learning rate ramps up from 0.")
    batch_size: int = _f(16, "Sequences per step on each GPU. Lower it if the GPU runs out of memory.")
    grad_accum: int = _f(1, "Steps whose gradients add up before one update: effective batch = batch size x this.")
    max_steps: int = _f(100, "Number of updates (0 = use epochs instead).")
    epochs: float = _f(1.0, "Passes over the data, used when max steps is 0.")
    max_seq_length: int = _f(512, "Longest sequence in tokens; longer rows are cut.")
    packing: bool = _f(True, "Pack several short rows into one sequence (no padding, each row still sees only itself).")
    gradient_checkpointing: bool = _f(True, "Recompute activations in the backward pass: much less memory, about 30% slower.")
    liger_kernels: bool = _f(True, "Use Liger's fused GPU kernels (RMSNorm, SwiGLU, RoPE) where the liger-kernel package is installed: less memory, faster steps. GPU only.")
    fp8_base: str = _f("off", "Multiply by the frozen 4-bit base weights in FP8 on GPUs with FP8 units (compute capability 8.9 or newer, e.g. RTX 40xx, H100). 'off'; 'backward': only in the backward pass (the forward pass that gives the loss stays bf16): the same learning, a few percent faster on a 13B, slower on smaller models; 'all': faster still, but the model learns slightly less. The LoRA layers stay in bf16. Ignored elsewhere. GPU only.", choices=FP8_MODES)
    offload_activations: bool = _f(True, "Keep the activations saved for the backward pass in CPU memory instead of GPU memory (GPU only): more rows fit in one pass. The copies run beside the math and come back just before they are needed.")
    loss_on: str = _f("response", "Compute the loss on the replies only ('response') or on the whole text ('all').", choices=("response", "all"))
    optim: str = _f("adamw_torch", "Optimizer (any name transformers accepts, e.g. adamw_torch, paged_adamw_8bit).")
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm (0 = off).")
    # bookkeeping
    logging_steps: int = _f(10, "Write a metrics line every N updates.")
    save_steps: int = _f(50, "Save a checkpoint every N updates (0 = only at the end).")
    eval_steps: int = _f(0, "Compute the eval loss every N updates (0 = off; needs an eval split).")
    seed: int = _f(42, "Random seed for the LoRA weights and the data order.")
    report_to: str = _f("none", "Also log to: none, wandb or tensorboard.", choices=("none", "wandb", "tensorboard"))
    wandb_project: str = _f("qlora-studio", "wandb project name.")
    resume: bool = _f(False, "Continue from the last complete checkpoint of this run folder.")

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if isinstance(d.get("fp8_base"), bool):  # a run folder from before fp8_base had modes
            d = {**d, "fp8_base": "all" if d["fp8_base"] else "off"}
        return super().from_dict(d)

    def _rules(self) -> list[str]:
        out = []
        if not self.data:
            out.append(Text("data: choose a prepared dataset", "data：请选择一个已准备好的数据集"))
        if not self.out:
            out.append(Text("out: choose a run folder", "out：请选择运行文件夹"))
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_seq_length", "logging_steps"):
            if getattr(self, name) < 1:
                out.append(Text(f"{name}: must be at least 1", f"{name}：至少为 1"))
        for name in ("max_steps", "save_steps", "eval_steps"):
            if getattr(self, name) < 0:
                out.append(Text(f"{name}: must be 0 or more", f"{name}：必须为 0 或更大"))
        if self.max_steps > MAX_STEPS:
            out.append(Text(f"max_steps: must be at most {MAX_STEPS:,} (a million updates); 0 trains for the "
                            "given epochs instead",
                            f"max_steps：最多 {MAX_STEPS:,}（一百万次更新）；填 0 则按训练轮数训练"))
        if self.max_steps == 0 and not 0 < self.epochs <= MAX_EPOCHS:
            out.append(Text(f"epochs: must be more than 0 and at most {MAX_EPOCHS:,} when max steps is 0",
                            f"epochs：max_steps 为 0 时必须大于 0 且不超过 {MAX_EPOCHS:,}"))
        if not 0 <= self.lora_dropout <= 0.5:
            out.append(Text("lora_dropout: must be between 0 and 0.5", "lora_dropout：必须在 0 到 0.5 之间"))
        if not 0 < self.learning_rate < 1:
            out.append(Text("learning_rate: must be between 0 and 1 (2e-4 is usual)", "learning_rate：必须在 0 到 1 之间（常用 2e-4）"))
        if not 0 <= self.warmup_ratio < 1:
            out.append(Text("warmup_ratio: must be between 0 and 1", "warmup_ratio：必须在 0 到 1 之间"))
        if self.max_grad_norm < 0:
            out.append(Text("max_grad_norm: must be 0 (off) or more", "max_grad_norm：必须为 0（关闭）或更大"))
        try:
            gpus.parse(self.gpus)
        except ValueError as e:
            out.append(errors.of(e))
        if not optimizer_known(self.optim):
            out.append(Text(f"optim: unknown optimizer {self.optim!r}; use one transformers knows, e.g. "
                            f"{', '.join(COMMON_OPTIMIZERS[:4])}",
                            f"optim：未知的优化器 {self.optim!r}；请用 transformers 支持的，例如 "
                            f"{', '.join(COMMON_OPTIMIZERS[:4])}"))
        return out


# The optimizers people use with LoRA: checked without importing transformers (the panel validates as
# you type). Any other name is looked up in transformers itself, which brings in torch (seconds).
COMMON_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "adafactor", "adamw_8bit",
                     "adamw_bnb_8bit", "paged_adamw_32bit", "sgd", "adagrad", "rmsprop", "lion_8bit",
                     "paged_lion_8bit")


# Of those, the ones torch itself provides: no bitsandbytes needed.
TORCH_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")


def optimizer_known(name: str) -> bool:
    """Whether transformers' Trainer accepts `name` as its `optim`."""
    if name in COMMON_OPTIMIZERS:
        return True
    import logging

    # transformers imports bitsandbytes, which announces a missing optional CPU kernel on stderr: not
    # for a user who mistyped a name (the CLI promises one line).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.training_args import OptimizerNames

    return name in {o.value for o in OptimizerNames}


# The dataclass defaults are the default preset: the same LoRA as the tutorial, but bf16 where the
# card has it (and then no float32 upcast), rows packed without padding into full 512-token rows,
# 16 of them in one pass (activations offloaded to CPU memory so that this fits where the tutorial
# fits), Liger's fused kernels, and the loss on the replies only. A packed update holds about 1.7x
# the tokens of the tutorial's 16 padded rows, so the learning rate is scaled by the same factor
# (2e-4 x 1.7 = 3.4e-4): the same data then trains in fewer updates to the same or better held-out
# loss. docs/BENCHMARKS.md measures each change.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The tutorial, setting for setting: fp16 compute, r64/alpha16/dropout .1 on the default
    # targets, batch 4 x accumulation 4, lr 2e-4, 100 steps, 512 tokens, whole-text loss, no packing.
    "tutorial": dict(
        compute_dtype="float16", learning_rate=2e-4, batch_size=4, grad_accum=4, packing=False, loss_on="all",
        liger_kernels=False, offload_activations=False,
    ),
}


# The default preset, sized for a CPU: what runs there anyway (plain LoRA in float32, no GPU-only
# kernels or offloading) and a first run of a few minutes that still teaches something. A CPU
# trains some 15 tokens a second a core on the embedded model (docs/BENCHMARKS.md), so 100 updates
# of 16 packed 512-token rows would take days: 15 updates of 4 unpadded short rows (about 3,500
# tokens of the sample data) take about 4 minutes on one busy core. Fewer updates need a stronger step to learn: LoRA
# on every linear layer at r16 with a learning rate of 1e-3, no dropout. Recomputing activations
# only costs time here (a small model's memory is not the limit on a CPU). Every step is logged:
# each takes seconds. One adjustment of the one default, not a third preset: the user picks
# "default" everywhere and gets what fits the machine; the tutorial preset stays the tutorial's
# recipe wherever it runs, so the two can be compared.
CPU_SIZED: dict[str, Any] = dict(
    quantization="none", double_quant=False, liger_kernels=False, offload_activations=False,
    gradient_checkpointing=False, batch_size=4, grad_accum=1, max_seq_length=256, packing=False,
    lora_r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", learning_rate=1e-3,
    max_steps=15, logging_steps=1,
)


def on_cpu(compute_dtype: str) -> dict[str, Any]:
    """What a run without a GPU makes of the settings the machine decides (core.trainer.used), whatever they ask for:
    plain LoRA (no 4-bit loading) in float32, or bfloat16 where asked for (float16 autocast fails on a CPU), and no
    GPU kernels, FP8 or offloading."""
    return {"quantization": "none", "double_quant": False,
            "compute_dtype": "bfloat16" if compute_dtype == "bfloat16" else "float32",
            "liger_kernels": False, "fp8_base": "off", "offload_activations": False}


def preset(name: str, cpu: bool = False, **overrides) -> TrainConfig:
    """A TrainConfig from a named preset (the default one sized for a CPU when `cpu`), with the user's own settings on top."""
    if name not in PRESETS:
        raise UserError(f"preset: unknown preset {name!r}; use {' or '.join(PRESETS)}", field="preset",
                        zh=f"preset：未知的预设 {name!r}；请用 {' 或 '.join(PRESETS)}")
    sized = CPU_SIZED if cpu and name == "default" else {}
    return TrainConfig.from_dict({**PRESETS[name], **sized, "preset": name, **overrides})


# ---------------------------------------------------------------------------------------
@dataclass
class MergeConfig(_Config):
    """Folding an adapter into its base model to get a standalone model."""

    adapter: str = _f("", "The adapter folder of a run (RUN/adapter).")
    out: str = _f("", "Folder to write the merged model into (must not exist).")
    base: str = _f("", "Base model; empty = the one the run was trained on.")
    dtype: str = _f("float16", "Number format of the merged weights.", choices=("float16", "bfloat16", "float32"))
    base_weights: str = _f("original", "Which base weights the adapter is added to: 'original' (the base's own 16-bit weights, as the tutorial merges) or 'as-trained' (those weights rounded to 4-bit NF4 and back, the weights QLoRA trained the adapter against, as axolotl merges). As trained is the exact base + adapter of training; original keeps the base's full precision.", choices=("original", "as-trained"))
    trust_remote_code: bool = _f(False, "Run code shipped with the model. Only for models you trust.")
    compare: bool = _f(True, "Compare the merged model's answers with base + adapter on a probe, where both fit in memory at once (they need twice the model's size for a moment).")

    def _rules(self) -> list[str]:
        out = []
        if not self.adapter:
            out.append(Text("adapter: choose a run's adapter folder", "adapter：请选择一次运行的适配器文件夹"))
        if not self.out:
            out.append(Text("out: choose an output folder", "out：请选择输出文件夹"))
        return out


# ---------------------------------------------------------------------------------------
SOURCES = ("huggingface", "mirror", "modelscope")


@dataclass
class DownloadConfig(_Config):
    """A model from a hub id into workspace/models: where from, and which files."""

    repo: str = _f("", "The hub id, owner/name (for example Qwen/Qwen2.5-0.5B-Instruct, or the dataset BelleGroup/train_0.5M_CN).")
    kind: str = _f("model", "What the hub id names: a model (downloaded whole) or a dataset (streamed, and a random sample of it saved as a data file for the Data tab).", choices=("model", "dataset"))
    source: str = _f("huggingface", "Where to download from: huggingface, mirror (a Hugging Face mirror at the address below) or modelscope.", choices=SOURCES)
    endpoint: str = _f("", "The mirror's address, for source 'mirror' (for example https://hf-mirror.com); for ModelScope, another ModelScope site (empty = the default).")
    out: str = _f("", "Folder to write the model into (empty = workspace/models/ and the repo's name; must not exist).")
    allow_bin: bool = _f(False, "Allow pickle weights (.bin) when a repo has no safetensors. transformers reads them with weights_only; still, only for repos you trust.")
    rows: int = _f(1000, "For a dataset: how many rows to keep, picked at random while streaming (never the whole dataset).")
    seed: int = _f(42, "For a dataset: the random seed of the sample.")

    def _rules(self) -> list[str]:
        from core.paths import HUB_ID

        out = []
        if not HUB_ID.fullmatch(self.repo.strip()):
            out.append(Text(f"repo: {self.repo!r} is not a hub id; write it as owner/name, e.g. Qwen/Qwen2.5-0.5B-Instruct",
                            f"repo：{self.repo!r} 不是模型库 ID；请写成 owner/name，例如 Qwen/Qwen2.5-0.5B-Instruct"))
        if self.source == "mirror" and not self.endpoint.strip().startswith(("http://", "https://")):
            out.append(Text("endpoint: give the mirror's address, starting with https:// (for example https://hf-mirror.com)",
                            "endpoint：请填写镜像地址，以 https:// 开头（例如 https://hf-mirror.com）"))
        elif self.endpoint.strip() and not self.endpoint.strip().startswith(("http://", "https://")):
            out.append(Text("endpoint: the address must start with https://", "endpoint：地址必须以 https:// 开头"))
        if self.kind == "dataset" and self.rows < 1:
            out.append(Text("rows: keep at least 1 row", "rows：至少保留 1 行"))
        return out


# ---------------------------------------------------------------------------------------
@dataclass
class ExportConfig(_Config):
    """A merged model as GGUF files (llama.cpp, Ollama, LM Studio) with an Ollama Modelfile."""

    model: str = _f("", "The merged model folder to export.")
    out: str = _f("", "Folder to write the GGUF files and the Modelfile into (must not exist).")
    quant: str = _f("q4_k_m", "A smaller copy besides the 16-bit file: q4_k_m (4-bit, about 30% of the size: Q4_K_M where llama.cpp's llama-quantize is installed, else Q4_0 made here), q8_0 (8-bit, about 53%), or none.", choices=("q4_k_m", "q8_0", "none"))

    def _rules(self) -> list[str]:
        out = []
        if not self.model:
            out.append(Text("model: choose a merged model", "model：请选择一个合并后的模型"))
        if not self.out:
            out.append(Text("out: choose an output folder", "out：请选择输出文件夹"))
        return out


# ---------------------------------------------------------------------------------------
@dataclass
class GenerationConfig(_Config):
    """Settings for chat: how the model is loaded on a GPU, and how it samples."""

    precision: str = _f("auto", "How the model is loaded on a GPU: auto (16-bit where the weights and the context fit the free memory, else 8-bit, else 4-bit), 16bit, 8bit, 4bit (NF4), or int4 (torchao int4 weight-only: about as small as 4bit and faster once compiled; needs the torchao package). Ignored on the CPU.", choices=("auto", "16bit", "8bit", "4bit", "int4"))

    system: str = _f("", "Standing instructions for the assistant, before every conversation.")
    temperature: float = _f(0.7, "Randomness: 0 always picks the likeliest word.", bounds=(0, 2), step=0.05)
    top_p: float = _f(0.9, "Sample only from the likeliest words that add up to this share.", bounds=(0.01, 1), step=0.01)
    top_k: int = _f(50, "Sample only from this many likeliest words (0 = no limit).")
    repetition_penalty: float = _f(1.1, "Above 1 discourages repeating the same words.", bounds=(0.5, 2), step=0.05)
    max_new_tokens: int = _f(256, "Longest reply in tokens.", bounds=(1, 8192), step=1)
    gpus: str = _f("", "GPUs to load the model on, by their numbers in the GPU panel, e.g. 0,1; empty = the first GPU. With two or more, the model's layers are spread over them, for a model too big for one card. Ignored on the CPU.")

    def _rules(self) -> list[str]:
        out = []
        if self.top_k < 0:
            out.append(Text("top_k: must be 0 or more", "top_k：必须为 0 或更大"))
        try:
            gpus.parse(self.gpus)
        except ValueError as e:
            out.append(errors.of(e))
        return out


# ---------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse for `python -m core CMD`: a wrong flag is a UserError (one line, exit code 2)."""

    def error(self, message):
        raise UserError(f"{self.prog.split()[-1]}: {message}", zh=f"{self.prog.split()[-1]}：命令行参数有误：{message}")

    def parse_known_args(self, args=None, namespace=None):
        # argparse takes `-1e-4` in `--learning-rate -1e-4` for an option and reports the value as
        # missing. Glued to its flag (`--learning-rate=-1e-4`) it is read as a value, so that
        # validate() can say what is wrong with it.
        return super().parse_known_args(_glue_negative_numbers(sys.argv[1:] if args is None else list(args)),
                                        namespace)


def _glue_negative_numbers(args: list[str]) -> list[str]:
    """`--flag -1.5` -> `--flag=-1.5`, for every value that reads as a negative number (-inf too)."""
    out: list[str] = []
    for arg in args:
        prev = out[-1] if out else ""
        if "--" in out:  # after `--` everything is a positional value already
            out.append(arg)
        elif prev.startswith("--") and len(prev) > 2 and "=" not in prev and arg.startswith("-") and _number(arg):
            out[-1] = f"{prev}={arg}"
        else:
            out.append(arg)
    return out


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def from_argv(cls, argv: list[str], prog: str, description: str):
    """A command's settings from its flags (one per field of `cls`), checked: bad values end the command in one line."""
    parser = Parser(prog=prog, description=description)
    add_arguments(parser, cls)
    cfg = cls.from_dict(vars(parser.parse_args(argv)))
    cfg.check()
    return cfg


def add_arguments(parser, cls, skip: tuple[str, ...] = ()) -> None:
    """One `--flag` per dataclass field, help text included; unset flags are left out of the result."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        # argparse fills help texts in with `%`: a literal one ("30% slower") must be doubled.
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=f.metadata.get("help", "").replace("%", "%%"))
        t = f.type if isinstance(f.type, str) else f.type.__name__
        if t.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            parser.add_argument(flag, metavar=f.name.upper(), **kw)
