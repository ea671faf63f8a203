"""GGUF export: the 16-bit file answers like the merged model, the Modelfile prompts like training did,
and what cannot be done here (no quantizer, an architecture the converter lacks) is said in words."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_train import shared_merge

from core import export, jobs, status
from core.config import ExportConfig
from core.errors import UserError
from core.template import Template

_shared: dict = {}


def exported(tmp_path_factory) -> dict:
    """The shared merged model exported once by the panel's job (no llama-quantize here: Q4_K_M is skipped)."""
    if "job" not in _shared:
        home = tmp_path_factory.mktemp("export-home")
        mp = pytest.MonkeyPatch()
        mp.setenv("QLORA_STUDIO_HOME", str(home))
        mp.setenv(export.QUANTIZER_ENV, str(home / "no-such-llama-quantize"))
        try:
            job = jobs.JobManager().start_export(ExportConfig(model=str(shared_merge()), out=str(home / "gguf")))
            started = time.time()
            while job.alive():
                time.sleep(0.2)
            _shared["job"] = {"folder": job.folder, "out": home / "gguf", "seconds": time.time() - started,
                              "status": status.read(job.folder), "log": job.log_tail(40)}
        finally:
            mp.undo()
    return _shared["job"]


@pytest.mark.slow
def test_the_16_bit_gguf_gives_the_merged_models_greedy_tokens(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = exported(tmp_path_factory)
    assert done["status"]["state"] == "finished", done["log"]
    report = done["status"]["report"]
    f16 = Path(report["files"][0]["path"])
    assert report["files"][0]["kind"] == "f16" and f16.is_file() and f16.parent == done["out"]
    merged = shared_merge()
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok("### Human: 你是谁？ ### Assistant:", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        reference = ours(ids).logits
        # The GGUF holds the weights in 16 bits: the merged model rounded the same way must agree token for token.
        for p in ours.parameters():
            p.copy_(p.half().float())
        want = ours.generate(ids, max_new_tokens=16, do_sample=False)
        del ours
        gguf = AutoModelForCausalLM.from_pretrained(f16.parent, gguf_file=f16.name, dtype=torch.float32).eval()
        got = gguf.generate(ids, max_new_tokens=16, do_sample=False)
        assert (gguf(ids).logits - reference).abs().max() < 0.5  # and close to the float32 merged model
    assert got.tolist() == want.tolist()
    # The tokenizer travels inside the GGUF too.
    assert AutoTokenizer.from_pretrained(f16.parent, gguf_file=f16.name)("你是谁？").input_ids == tok("你是谁？").input_ids


@pytest.mark.slow
def test_export_says_why_q4_k_m_was_skipped_and_writes_a_chatml_modelfile(tmp_path_factory, tokenizer):
    from ui.merge import export_result_text

    done = exported(tmp_path_factory)
    report = done["status"]["report"]
    assert report["skipped"] == {"quant": "q4_k_m", "why": "no_quantizer"}
    assert [f["kind"] for f in report["files"]] == ["f16"]
    assert {p.name for p in done["out"].iterdir()} == {"Modelfile", "export.json", "merged-f16.gguf"}
    assert not list(done["out"].parent.glob(".gguf.*.tmp")), "no half-written export is left behind"
    # The run trained with the model's own (ChatML) chat template: the Modelfile writes it out for Ollama.
    modelfile = (done["out"] / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{Path(report['files'][0]['path']).name}\n")
    assert export.CHATML in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    system = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).split("\n", 1)[1]
    assert f'SYSTEM """{system.split("<|im_end|>")[0]}"""' in modelfile
    english, chinese = export_result_text(done["folder"], "en"), export_result_text(done["folder"], "zh")
    assert "llama-quantize" in english and "not installed" in english and "F16" in english
    assert "没有安装" in chinese and "ollama create" in chinese


def test_modelfile_prompts_like_the_seed_and_custom_templates(tokenizer):
    seed = export.modelfile("./m.gguf", {"template": Template().to_dict()}, tokenizer)
    assert ('{{ else if eq .Role "user" }}### Human: {{ .Content }} ### Assistant: '
            '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>{{ end }}') in seed
    assert 'PARAMETER stop "### Human:"' in seed and 'PARAMETER stop "<|im_end|>"' in seed
    custom = export.modelfile("./m.gguf", {"template": Template.custom("Q: {instruction}{input}\nA: {output}\n").to_dict()},
                              tokenizer)
    assert '{{ else if eq .Role "user" }}Q: {{ .Content }}\nA: {{ else if eq .Role "assistant" }}{{ .Content }}\n<|im_end|>' \
        in custom
    assert 'PARAMETER stop "Q:"' in custom


def test_an_architecture_the_converter_lacks_is_refused_in_words(tmp_path):
    from ui.merge import export as export_in_panel

    model = tmp_path / "merged" / "odd"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"architectures": ["NoSuchNetForCausalLM"]}))
    (model / "model.safetensors").write_bytes(b"")
    assert "cannot convert NoSuchNetForCausalLM" in export.unsupported(model)
    with pytest.raises(UserError, match="NoSuchNetForCausalLM"):
        export.export(ExportConfig(model=str(model), out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()

    class Chinese:
        headers = {"accept-language": "zh-CN"}

    mp = pytest.MonkeyPatch()
    mp.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    try:
        shown, _ = next(export_in_panel(Chinese(), "odd", "", "q8_0"))
    finally:
        mp.undo()
    assert "无法在这里导出为 GGUF" in shown and "NoSuchNetForCausalLM" in shown


def test_the_panel_names_only_folders_inside_merged_and_exports(tmp_path, monkeypatch):
    from ui.merge import export_config

    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    cfg = export_config("demo", "", "q8_0")
    assert cfg.model == str(tmp_path / "merged" / "demo") and cfg.out == str(tmp_path / "exports" / "demo")
    for model, out in (("../../etc", ""), ("/etc", ""), ("demo", "../../tmp/x"), ("demo", "/tmp/x")):
        with pytest.raises(UserError):
            export_config(model, out, "q8_0")
