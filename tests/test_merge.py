"""Merging on CPU: the merged model answers exactly like base + adapter, is pickle-free, and bad input is refused."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from test_train import core_cli, core_here, pickles, shared_merge, shared_run

from core import runs
from core.config import MergeConfig
from core.errors import UserError
from core.merge import job_folder, merge

TEXT_FILES = {".json", ".jinja", ".txt", ".md"}


@pytest.mark.slow
def test_merged_model_matches_adapter_on_base(base_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = shared_merge()
    adapter = shared_run() / "adapter"
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok("### Human: 你是谁？ ### Assistant:", return_tensors="pt")
    with torch.no_grad():
        on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32),
                                            str(adapter)).eval()(**ids).logits
        alone = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()(**ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).eval()(**ids).logits
    assert (on_base - alone).abs().max() < 1e-3
    assert (base - alone).abs().max() > 0.1  # the adapter really changed something


@pytest.mark.slow
def test_merged_folder_is_safetensors_and_carries_the_template():
    merged = shared_merge()
    assert pickles(merged) == []
    kinds = {p.suffix for p in merged.iterdir()}
    assert ".safetensors" in kinds and kinds <= TEXT_FILES | {".safetensors"}, kinds
    record = json.loads((merged / "qlora_studio.json").read_text())
    assert record["template"]["name"] == "chat" and record["base_model"] == "default"
    report = record["merge"]
    assert report["ok"] and report["max_abs_diff"] < 1e-3 * max(1.0, report["logit_scale"]) and report["dtype"] == "float32"
    assert report["size_bytes"] == sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    assert json.loads((merged / "config.json").read_text())["dtype"] == "float32"
    assert not list(merged.parent.glob(f".{merged.name}.*"))  # no temporary folder left behind


@pytest.mark.slow
def test_cli_merges_in_16_bit_and_reports(tmp_path):
    out = tmp_path / "merged16"
    result = core_cli("merge", "--adapter", shared_run() / "adapter", "--out", out)  # float16 by default
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["path"] == str(out) and report["dtype"] == "float16"
    assert report["top1_agreement"] > 0.9 and report["max_abs_diff"] < 1.0
    assert 0.2 < report["size_gb"] < 0.3  # 135M weights at 2 bytes each
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert "merged model written to" in result.stdout
    assert not job_folder(out).exists(), "a merge run by hand leaves nothing beside its output"


def test_a_merge_started_by_the_panel_reports_progress_and_result_in_its_status(tmp_path, monkeypatch):
    from core import jobs, status

    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    job = jobs.JobManager().start_merge(MergeConfig(adapter=str(shared_run() / "adapter"), out=str(tmp_path / "m"),
                                                    dtype="float32"))
    seen = set()
    while job.alive():
        now = status.read(job.folder)
        if now.get("message"):
            seen.add(now["message"].split(" ")[0])
        time.sleep(0.05)
    done = status.read(job.folder)
    assert done["state"] == "finished" and done["progress"] == 1.0 and done["report"]["ok"], done
    assert done["report"]["path"] == str(tmp_path / "m") and (tmp_path / "m" / "config.json").is_file()
    assert len(seen) >= 2, seen  # the stages (loading, merging, writing, …) arrived while it worked
    assert job.folder == str(job_folder(tmp_path / "m")) and (Path(job.folder) / "merge.log").is_file()
    # The page's log: the job's own lines, in the reader's language.
    chinese, english = runs.story(job.folder, 200, "zh"), runs.story(job.folder, 200, "en")
    assert "正在逐个张量读取" in chinese and "合并后的模型已写入" in chinese and "reading" not in chinese, chinese
    assert "reading default tensor by tensor" in english and "merged model written to" in english, english
    assert "[100%]" in chinese.splitlines()[-1]


def test_the_merge_tab_shows_the_jobs_lines_in_the_readers_language(tmp_path):
    """While a job runs and when it has ended, the Merge tab's log is its story in the reader's language; a job with
    no story yet shows the tail of its output."""
    from core import logs
    from ui import merge as tab

    class Job:
        folder, ticks = str(tmp_path), [True, False]

        def alive(self):
            return self.ticks.pop(0)

        def log_tail(self, n):
            return "raw output"

    shown = [log for _, log in tab.follow(Job(), lambda: "", lambda: "", "zh")]
    assert shown == ["raw output", "raw output"]
    logs.tell(tmp_path / logs.STORY, "[ 50%] checking", "[ 50%] 正在核对")
    Job.ticks = [False]
    assert [log.split(" ", 1)[1] for _, log in tab.follow(Job(), lambda: "", lambda: "", "zh")] == ["[ 50%] 正在核对"]


def test_refuses_an_existing_output_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    result = core_cli("merge", "--adapter", adapter, "--out", out)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: out: {out} already exists; choose a new folder for the merged model"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_refuses_a_folder_without_an_adapter(tmp_path):
    result = core_cli("merge", "--adapter", tmp_path, "--out", tmp_path / "out")
    assert result.returncode == 2 and "has no adapter_config.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_refuses_an_adapter_made_for_another_model(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-model"  # same family, other shapes: the adapter's matrices cannot fit
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4)).save_pretrained(other)
    result = core_here("merge", "--adapter", shared_run() / "adapter", "--out", tmp_path / "out", "--base", other,
                      "--dtype", "float32")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit the base model" in lines[0] and str(other) in lines[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


# ---- adapters that are broken in ways a user meets -----------------------------------------------
def adapter_copy(src: Path, dst: Path, fill: float | None = None) -> Path:
    """A copy of the adapter folder `src`; with `fill`, every weight set to that value (nan: a diverged run)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if fill is not None:
        weights = dst / "adapter_model.safetensors"
        save_file({k: torch.full_like(v, fill) for k, v in load_file(weights).items()}, weights,
                  metadata={"format": "pt"})
    return dst


def own_code_model(folder: Path, base_model: str) -> Path:
    """A model folder whose architecture only its own (absent) Python code defines, with a working tokenizer."""
    shutil.copytree(base_model, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="studio_custom", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def one_line(result) -> str:
    """The single stderr line of a refused command (exit code 2, no traceback)."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    return result.stderr.strip()


def test_refuses_an_adapter_whose_run_diverged(tiny_adapter, tmp_path):
    from core.config import MergeConfig
    from core.errors import UserError
    from core.merge import merge

    nan = adapter_copy(tiny_adapter, tmp_path / "nan", float("nan"))
    with pytest.raises(UserError) as e:
        merge(MergeConfig(adapter=str(nan), out=str(tmp_path / "out")))
    assert str(e.value) == (f"adapter: {nan} holds NaN/inf values (the run diverged); train again with a lower "
                            "learning rate")
    assert not (tmp_path / "out").exists()


def test_merge_check_fails_when_the_merged_model_overflows(tiny_adapter, tmp_path):
    """Finite adapter values whose product exceeds float16's range: the check must not pass on inf/NaN."""
    from core.config import MergeConfig
    from core.merge import merge

    huge = adapter_copy(tiny_adapter, tmp_path / "huge", 100.0)  # 4 x 100 x 100 x scale 2 = 80,000 > 65,504
    with pytest.raises(UserError, match="holds NaN/inf values in float16; merge in bfloat16 or float32"):
        merge(MergeConfig(adapter=str(huge), out=str(tmp_path / "out"), dtype="float16"))
    assert not (tmp_path / "out").exists(), "no model full of inf is written"
    assert merge(MergeConfig(adapter=str(huge), out=str(tmp_path / "bf16"), dtype="bfloat16"))["finite"]


@pytest.mark.parametrize("config, why", [
    ('{"peft_type": "LORA", "r": 4,', "adapter_config.json is not valid JSON"),
    ("{}", "no peft_type"),
    ('{"peft_type": "NO_SUCH_KIND"}', "unknown peft_type 'NO_SUCH_KIND'"),
    ('{"peft_type": "LORA", "r": 0, "lora_alpha": 8}', "r and lora_alpha must be positive numbers"),
])
def test_a_broken_adapter_config_is_one_line_naming_the_file(tiny_adapter, tmp_path, config, why):
    adapter = adapter_copy(tiny_adapter, tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text(config)
    line = one_line(core_here("merge", "--adapter", adapter, "--out", tmp_path / "out"))
    assert line.startswith(f"error: adapter: {adapter} is damaged or incomplete (") and why in line
    assert line.endswith("; train again or pick another run") and not (tmp_path / "out").exists()


def test_a_model_with_its_own_code_needs_trust(tiny_adapter, tmp_path, base_model):
    custom = own_code_model(tmp_path / "custom", base_model)
    line = one_line(core_here("merge", "--adapter", tiny_adapter, "--base", custom, "--out", tmp_path / "out"))
    assert line == f"error: model: {custom} ships its own code; switch on 'Trust remote code' if you trust it"


def _adapter(base_model, folder, **lora):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core import models

    torch.manual_seed(1)
    net = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32),
                         LoraConfig(init_lora_weights=False, **lora))
    net.save_pretrained(folder)
    models.load_tokenizer(base_model).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("lora", [dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                                  dict(r=8, lora_alpha=16, target_modules="all-linear", use_rslora=True)],
                         ids=["q-v", "all-linear-rslora"])
def test_folding_tensor_by_tensor_equals_peft_merge_within_one_rounding_step(base_model, tmp_path, lora):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from core import fold

    adapter = _adapter(base_model, tmp_path / "adapter", **lora)
    assert fold.unsupported(adapter, Path(base_model)) is None
    out = tmp_path / "folded"
    out.mkdir()
    done = fold.fold(Path(base_model), adapter, out, "float16", lambda f, t: None)
    ours = load_file(str(out / "model.safetensors"))
    # peft's merge in float32, rounded once to float16 the same way.
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32),
                                          str(adapter)).merge_and_unload().state_dict()
    assert done["merged_tensors"] == sum(1 for k in ours if k in reference and ".layers." in k and
                                         any(t in k for t in (["q_proj", "v_proj"] if lora["r"] == 4 else
                                                              ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])))
    for name, tensor in ours.items():
        expected = reference[name].to(torch.float16).float()
        step = expected.abs() * 2**-10 + 2**-24  # one float16 rounding step
        assert tensor.dtype == torch.float16 and ((tensor.float() - expected).abs() <= step).all(), name


def test_adapters_folding_cannot_merge_exactly_go_through_peft(base_model, tmp_path):
    from core import fold

    dora = _adapter(base_model, tmp_path / "dora", r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    assert fold.unsupported(dora, Path(base_model)) == "DoRA"
    report = merge(MergeConfig(adapter=str(dora), base="default", out=str(tmp_path / "m"), dtype="float32"))
    assert report["ok"] and report["method"] == "peft (DoRA)" and report["compared"], report


def test_a_large_model_is_merged_without_loading_it_whole(tiny_adapter, tmp_path, monkeypatch):
    """With too little memory to hold it twice, the merge still writes every tensor, checked for NaN/inf."""
    import psutil

    from core import fold

    monkeypatch.setattr(fold, "SHARD", 64 * 2**20)  # several shards, with an index
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=300 * 2**20))
    report = merge(MergeConfig(adapter=str(tiny_adapter), base="default", out=str(tmp_path / "m"), dtype="bfloat16"))
    assert report["ok"] and not report["compared"] and report["method"] == "tensor by tensor", report
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert report["shards"] > 2 and len(set(index["weight_map"].values())) == report["shards"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.vocab_size == 49152


# ---- which base: the original weights, or the NF4-rounded ones QLoRA trained against ----
def _tiny_llama(base_model, folder: Path) -> Path:
    """A two-layer Llama with random weights and the embedded model's tokenizer (rounding the whole 135M
    model to NF4 on the CPU takes bitsandbytes about 20 s a pass)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core import models

    tokenizer = models.load_tokenizer(base_model)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_as_trained_adds_the_adapter_to_the_nf4_rounded_weights_and_checks_against_them(base_model, tmp_path):
    """bitsandbytes' own NF4 rounding on the CPU; the merged model answers like the rounded base + adapter."""
    import torch
    from safetensors.torch import load_file

    from core import fold

    base = _tiny_llama(base_model, tmp_path / "tiny")
    adapter = _adapter(str(base), tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    report = merge(MergeConfig(adapter=str(adapter), base=str(base), out=str(tmp_path / "as-trained"),
                               dtype="float32", base_weights="as-trained"))
    # 2 layers x 7 linear weights rounded; checked against base + adapter on that same rounded base, in float32.
    assert report["ok"] and report["compared"] and report["rounded_tensors"] == 2 * 7, report
    assert report["base_weights"] == "as trained (NF4-rounded)"
    merged = load_file(str(tmp_path / "as-trained" / "model.safetensors"))
    original = load_file(str(base / "model.safetensors"))
    down = "model.layers.1.mlp.down_proj.weight"  # rounded, no LoRA on it: at most 16 values in each block of 64
    assert max(len(torch.unique(b)) for b in merged[down].reshape(-1, 64)) <= 16
    assert torch.equal(merged[down], fold.nf4_round(original[down])) and not torch.equal(merged[down], original[down].float())
    embed = "model.embed_tokens.weight"  # 16 bits in a 4-bit load: untouched
    assert torch.equal(merged[embed], original[embed].float())
    # The original-weights merge of the same adapter is a different model (the rounding is not lost in float32).
    plain = merge(MergeConfig(adapter=str(adapter), base=str(base), out=str(tmp_path / "original"), dtype="float32"))
    assert plain["ok"] and plain["base_weights"] == "original" and plain["rounded_tensors"] == 0


def test_as_trained_of_a_run_without_a_gpu_is_the_original(tiny_adapter, tmp_path):
    """A run that trained as plain LoRA (no GPU) saw the original weights: as trained means those, and says so."""
    run = tmp_path / "cpu-run"
    shutil.copytree(tiny_adapter, run / "adapter")
    (run / "status.json").write_text(json.dumps({"state": "finished", "mode": "LoRA float32 (no GPU)"}))
    report = merge(MergeConfig(adapter=str(run / "adapter"), base="default", out=str(tmp_path / "m"),
                               dtype="bfloat16", base_weights="as-trained", compare=False))
    assert report["rounded_tensors"] == 0 and report["base_weights"].startswith("as trained = original"), report


# ---- the streamed shards: the files save_file would write, byte for byte ----
def _mixed_base(folder: Path, stored: str) -> dict:
    """A small base of the dtypes checkpoints hold (16-bit weights, float32 norms, an int64 buffer, a scalar and an
    empty tensor), as safetensors or as a pickle-free-read .bin; returns its tensors."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {"model.embed_tokens.weight": torch.randn(50, 16).to(torch.bfloat16),
               **{f"model.layers.{i}.self_attn.{p}.weight": torch.randn(16, 16).to(torch.bfloat16)
                  for i in range(3) for p in ("q_proj", "v_proj")},
               "model.norm.weight": torch.rand(16), "model.rotary.positions": torch.arange(7),
               "model.scale": torch.tensor(0.5, dtype=torch.bfloat16), "model.empty": torch.zeros(0, 16)}
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    if stored == "safetensors":
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(tensors, folder / "pytorch_model.bin")
    return tensors


@pytest.mark.parametrize("stored, dtype, writers", [("safetensors", "float16", 1), ("safetensors", "bfloat16", 1),
                                                    ("bin", "float32", 1), ("safetensors", "float16", 3),
                                                    ("safetensors", "bfloat16", 3)])
def test_folded_shards_are_the_files_save_file_writes(tmp_path, monkeypatch, stored, dtype, writers):
    """Also with several writing threads (a machine with many cores), each writing its own shards."""
    import torch
    from safetensors.torch import load_file, save_file

    from core import fold

    base = _mixed_base(tmp_path / "base", stored)
    lora = tmp_path / "adapter"
    lora.mkdir()
    (lora / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    pairs = {f"model.layers.{i}.self_attn.q_proj.weight": (torch.randn(2, 16), torch.randn(16, 2)) for i in range(3)}
    save_file({f"base_model.model.{name[:-7]}.lora_{x}.weight": t for name, ab in pairs.items() for x, t in zip("AB", ab, strict=True)},
              str(lora / "adapter_model.safetensors"))
    monkeypatch.setattr(fold, "SHARD", 1500)  # several shards, with an index
    monkeypatch.setattr(fold, "WRITERS", writers)
    copied = []  # tensors the kernel copied file to file (those the merge leaves as they are, in their own dtype)
    real_copy = fold._copy_range
    monkeypatch.setattr(fold, "_copy_range", lambda *a: copied.append(a[2]) or real_copy(*a))
    (tmp_path / "out").mkdir()
    done = fold.fold(tmp_path / "base", lora, tmp_path / "out", dtype, lambda f, t: None)
    kept = {n: t for n, t in base.items() if n not in pairs and t.numel() and not (t.is_floating_point() and
                                                                                   t.dtype != getattr(torch, dtype))}
    assert sorted(copied) == (sorted(t.numel() * t.element_size() for t in kept.values()) if stored == "safetensors" else [])

    target = getattr(torch, dtype)
    expected = {name: (t.float() + 2 * pairs[name][1] @ pairs[name][0] if name in pairs else t) for name, t in base.items()}
    expected = {name: t.to(target) if t.is_floating_point() else t for name, t in expected.items()}
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert done["shards"] == len(set(index["weight_map"].values())) > 2 and done["merged_tensors"] == 3
    assert sorted(index["weight_map"]) == sorted(base)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())
    for shard in sorted(set(index["weight_map"].values())):
        own = {name: expected[name] for name, file in index["weight_map"].items() if file == shard}
        save_file(own, str(tmp_path / "reference.safetensors"), metadata={"format": "pt"})
        assert (tmp_path / "out" / shard).read_bytes() == (tmp_path / "reference.safetensors").read_bytes(), shard
        assert all(torch.equal(t, own[name]) for name, t in load_file(str(tmp_path / "out" / shard)).items())


def test_a_base_weight_that_overflows_float16_is_named_and_nothing_is_written(tmp_path):
    """Not changed by the adapter, only converted: 1e6 fits bfloat16, not float16 (largest 65,504)."""
    import torch
    from safetensors.torch import load_file, save_file

    from core import fold

    _mixed_base(tmp_path / "base", "safetensors")
    tensors = load_file(str(tmp_path / "base" / "model.safetensors"))
    tensors["model.norm.weight"][3] = 1e6
    save_file(tensors, str(tmp_path / "base" / "model.safetensors"))
    lora = tmp_path / "adapter"
    lora.mkdir()
    (lora / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 1, "lora_alpha": 1}')
    stem = "base_model.model.model.layers.0.self_attn.v_proj"
    save_file({f"{stem}.lora_A.weight": torch.zeros(1, 16), f"{stem}.lora_B.weight": torch.zeros(16, 1)},
              str(lora / "adapter_model.safetensors"))
    with pytest.raises(UserError, match=r"^merge: model.norm.weight holds NaN/inf values in float16; merge in bfloat16"):
        merge(MergeConfig(adapter=str(lora), base=str(tmp_path / "base"), out=str(tmp_path / "out"), dtype="float16"))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*")), "no half-written model is left"
    (tmp_path / "bf16").mkdir()
    fold.fold(tmp_path / "base", lora, tmp_path / "bf16", "bfloat16", lambda f, t: None)
    assert load_file(str(tmp_path / "bf16" / "model.safetensors"))["model.norm.weight"][3] == 1e6


def test_a_jobs_progress_line_is_shown_in_the_readers_language(tmp_path):
    """A merge's or an export's stage, as the job writes it into its status, reads in Chinese on a Chinese page
    (it was English on both)."""
    from core import status
    from core.errors import Text
    from ui import merge as merge_tab

    status.Status(tmp_path).update(state="running", progress=0.85,
                                   message=Text("checking the merged model", "正在核对合并后的模型"))
    assert "85% · 正在核对合并后的模型" in merge_tab.progress_text(tmp_path, "zh")
    assert "85% · checking the merged model" in merge_tab.export_progress_text(tmp_path, "en")
