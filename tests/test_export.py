"""GGUF export: the 16-bit file answers like the merged model, the 4-bit Q4_0 file written without
llama.cpp answers close to it, the Modelfile prompts like training did and names the file asked for,
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
    """The shared merged model exported once by the panel's job, asking for 4 bits (the default).

    No llama-quantize here, so the 4-bit file is Q4_0, written from the 16-bit one with gguf."""
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
def test_export_writes_q4_0_without_llama_quantize_and_a_chatml_modelfile_that_serves_it(tmp_path_factory, tokenizer):
    from ui.merge import export_result_text

    done = exported(tmp_path_factory)
    assert done["status"]["state"] == "finished", done["log"]
    report = done["status"]["report"]
    assert report["quant"] == "q4_k_m" and report["instead"] == {"asked": "q4_k_m", "made": "q4_0", "why": "no_quantizer"}
    assert [f["kind"] for f in report["files"]] == ["f16", "q4_0"]
    assert {p.name for p in done["out"].iterdir()} == {"Modelfile", "export.json", "merged-f16.gguf", "merged-q4_0.gguf"}
    assert not list(done["out"].parent.glob(".gguf.*.tmp")), "no half-written export is left behind"
    assert "quantizing to Q4_0 with the gguf package" in done["log"]  # its progress, in the job's log and status
    # Ollama gets the 4-bit file that was asked for, prompted the way the run trained (the model's own ChatML).
    modelfile = (done["out"] / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./merged-q4_0.gguf\n")
    assert export.CHATML in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    system = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).split("\n", 1)[1]
    assert f'SYSTEM """{system.split("<|im_end|>")[0]}"""' in modelfile
    # The page names the 4-bit file it wrote and why it is not Q4_K_M, in both languages.
    english, chinese = export_result_text(done["folder"], "en"), export_result_text(done["folder"], "zh")
    for text in (english, chinese):
        assert "`merged-q4_0.gguf` · Q4_0" in text and "`merged-f16.gguf` · F16" in text
        assert "**Q4_0**" in text and "Q4_K_M" in text and "llama-quantize" in text
        assert "merged-q4_0.gguf -cnv" in text and "ollama create" in text
    assert "not installed on this machine" in english
    assert "没有安装" in chinese and "4 位文件是 **Q4_0**" in chinese


# A fixed text for the loss, in both languages the users write.
TEXT = ("The quick brown fox jumps over the lazy dog. Machine learning models learn patterns from data, "
        "and a smaller copy of a model trades a little accuracy for a lot of memory. "
        "北京是中国的首都，也是一座历史悠久的城市。")


@pytest.mark.slow
def test_the_q4_0_gguf_answers_like_the_merged_model(tmp_path_factory):
    """Asked as it was trained (its ChatML template, as the Modelfile prompts it in Ollama), the Q4_0 file
    gives the merged model's greedy answer: measured 15 of 16 tokens for "你是谁？" and 15 of 15 for "Who are
    you?", both "... Lumi ...". On a fixed text its loss was 4.078 against 3.603 for the 16-bit weights
    (+0.48 nats: a 135M model loses more to 4 bits than a 7B does; Q8_0 of the base model: +0.006), so
    the bound is +0.75. The 16-bit file holds the merged weights rounded to 16 bits and answers like them
    (the test above), so its loss is taken from those weights, not from loading that GGUF a second time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = exported(tmp_path_factory)
    assert done["status"]["state"] == "finished", done["log"]
    q4 = Path(done["status"]["report"]["files"][-1]["path"])
    merged = shared_merge()
    tok = AutoTokenizer.from_pretrained(merged)
    probes = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"] for q in ("你是谁？", "Who are you?")]
    text = tok(TEXT, return_tensors="pt").input_ids

    def answers(model):
        return [model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:] for ids in probes]

    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        want = answers(ours)
        for p in ours.parameters():
            p.copy_(p.half().float())
        f16_loss = ours(text, labels=text).loss.item()
        del ours
        gguf = AutoModelForCausalLM.from_pretrained(q4.parent, gguf_file=q4.name, dtype=torch.float32).eval()
        got = answers(gguf)
        q4_loss = gguf(text, labels=text).loss.item()
    for a, b in zip(got, want, strict=True):
        n = min(len(a), len(b))
        assert (a[:n] == b[:n]).sum().item() >= 0.75 * len(b), (tok.decode(a), tok.decode(b))
        assert "Lumi" in tok.decode(a)
    assert f16_loss < q4_loss < f16_loss + 0.75, (f16_loss, q4_loss)


@pytest.mark.slow
def test_the_q4_0_file_holds_4_bit_weights_in_about_a_third_of_the_16_bit_size(tmp_path_factory):
    """Measured: 91.7 MB against 270.9 MB (0.34; the tied 49152 x 576 embedding, a fifth of the weights, is Q8_0)."""
    import gguf

    done = exported(tmp_path_factory)
    f16, q4 = done["status"]["report"]["files"]
    assert q4["kind"] == "q4_0" and 0.28 < q4["bytes"] / f16["bytes"] < 0.37, (q4, f16)
    reader = gguf.GGUFReader(q4["path"])
    T = gguf.GGMLQuantizationType
    kinds = {t.name: (t.tensor_type, len(t.shape)) for t in reader.tensors}
    assert len(kinds) == 272 and "output.weight" not in kinds  # SmolLM2 ties the output to the embedding
    assert kinds.pop("token_embd.weight") == (T.Q8_0, 2)  # llama-quantize: Q6_K, which gguf cannot write
    assert {kind for kind, dims in kinds.values() if dims == 1} == {T.F32}  # the norms
    assert {kind for kind, dims in kinds.values() if dims == 2} == {T.Q4_0}
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q4_0


def test_q4_0_copies_every_field_and_quantizes_the_tensors_llama_quantize_would(tmp_path):
    """A small GGUF of every case: an untied embedding and output, a norm, a weight llama.cpp never quantizes,
    rows that do not divide into 32-value blocks."""
    import gguf
    import numpy as np

    T = gguf.GGMLQuantizationType
    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": rng.standard_normal((64, 32)).astype(np.float16),
               "blk.0.attn_norm.weight": np.ones(32, dtype=np.float32),
               "blk.0.attn_q.weight": rng.standard_normal((32, 64)).astype(np.float16),
               "blk.0.ffn_gate_inp.weight": rng.standard_normal((4, 32)).astype(np.float16),
               "blk.0.ffn_down.weight": rng.standard_normal((32, 40)).astype(np.float16),
               "output.weight": rng.standard_normal((64, 32)).astype(np.float16)}
    source = tmp_path / "m-f16.gguf"
    writer = gguf.GGUFWriter(source, arch="llama")
    writer.add_name("tiny")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_block_count(1)
    writer.add_token_list(["<s>", "你好", "hello"])
    writer.add_rope_freq_base(10000.0)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    shown = []

    made = export.q4_0(source, tmp_path / "m-q4_0.gguf", lambda fraction, text: shown.append(fraction))
    assert shown and shown == sorted(shown) and shown[-1] == 0.95  # the export's progress, forward only
    before, after = gguf.GGUFReader(source), gguf.GGUFReader(made["path"])
    fields = {f.name: f.contents() for f in before.fields.values() if not f.name.startswith("GGUF.")}
    assert {f.name: f.contents() for f in after.fields.values() if not f.name.startswith("GGUF.")} == {
        **fields, "general.file_type": gguf.LlamaFileType.MOSTLY_Q4_0}
    got = {t.name: t for t in after.tensors}
    assert list(got) == list(tensors)
    assert {name: t.tensor_type for name, t in got.items()} == {
        "token_embd.weight": T.Q4_0,  # untied: the embedding is Q4_0 like the layers, the output matrix Q8_0
        "blk.0.attn_norm.weight": T.F32, "blk.0.attn_q.weight": T.Q4_0, "blk.0.ffn_gate_inp.weight": T.F16,
        "blk.0.ffn_down.weight": T.F16, "output.weight": T.Q8_0}
    for name, array in tensors.items():  # each tensor's numbers, in its place, as close as its type allows
        t = got[name]
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(array.shape)
        error = np.abs(back - array.astype(np.float32)).max() / np.abs(array.astype(np.float32)).max()
        assert error < {T.Q4_0: 0.15, T.Q8_0: 0.01}.get(t.tensor_type, 0.0) + 1e-7, (name, error)
    assert export.q4_0_type("token_embd.weight", (64, 32), T.F16, tied=True) == T.Q8_0


@pytest.mark.slow
def test_where_llama_quantize_is_installed_the_4_bit_file_is_its_q4_k_m(base_model, tmp_path, monkeypatch):
    """A stand-in llama-quantize (it records how it was called and copies the file): the export hands it
    the 16-bit file, names its output in the Modelfile, and says nothing of Q4_0."""
    import sys

    from ui.merge import export_result_text

    tool = tmp_path / "llama-quantize"
    tool.write_text(f"#!{sys.executable}\nimport shutil, sys\n"
                    f"open({str(tmp_path / 'argv')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
                    "shutil.copyfile(sys.argv[1], sys.argv[2])\n")
    tool.chmod(0o755)
    monkeypatch.setenv(export.QUANTIZER_ENV, str(tool))
    report = export.export(ExportConfig(model=base_model, out=str(tmp_path / "out"), quant="q4_k_m"))
    name = Path(base_model).name
    source, target, kind = (tmp_path / "argv").read_text().split(" ")
    assert Path(source).name == f"{name}-f16.gguf" and Path(target).name == f"{name}-q4_k_m.gguf" and kind == "Q4_K_M"
    assert [f["kind"] for f in report["files"]] == ["f16", "q4_k_m"] and report["instead"] is None
    assert (tmp_path / "out" / "Modelfile").read_text().startswith(f"FROM ./{name}-q4_k_m.gguf\n")
    folder = tmp_path / "job"
    folder.mkdir()
    status.Status(folder).update(state="finished", report=report)
    assert "Q4_0" not in export_result_text(folder, "en") and "Q4_0" not in export_result_text(folder, "zh")


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
