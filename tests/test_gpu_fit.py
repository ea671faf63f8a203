"""The fit check on a CUDA GPU: estimates against real peaks, chat under a card-sized cap, memory given back,
and "as trained" merges against the 4-bit base + adapter they stand for.

Skipped on machines without CUDA (see conftest); run on the GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

import json

import pytest
from test_gpu import _random_llama, any_tokenizer, model_13b  # noqa: F401 - fixtures used by name
from test_train import ROOT, scratch

from core import fit
from core.config import GenerationConfig, MergeConfig, PrepareConfig, preset

pytestmark = pytest.mark.gpu
GiB = 2**30


def _cap(gib: float) -> None:
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GiB / total), 0)


@pytest.fixture(scope="module")
def model_7b(any_tokenizer):  # noqa: F811 - the fixture imported above
    """Llama-2-7B's shape on random weights."""
    return _random_llama(any_tokenizer, scratch() / "llama2-7b-shape", hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model_135m(any_tokenizer):  # noqa: F811
    return _random_llama(any_tokenizer, scratch() / "smollm2-shape-fit", hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)


def test_chat_loads_a_7b_under_a_16_gib_cap_in_a_precision_that_fits_and_answers(model_7b):
    import torch

    from core.chat import Chat

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    _cap(16)
    chat = Chat()
    try:
        chat.load(model_7b)
        reply = chat.reply([], "你好", GenerationConfig(temperature=0, max_new_tokens=8))
        peak = torch.cuda.max_memory_allocated() / GiB
    finally:  # the cap first: a failing close must not leave it on the tests after this one
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        chat.close()
    # 16-bit needs about 16.1 GiB with the 4096-token cache and the margin: 8-bit is chosen.
    assert chat.fitted["precision"] == "8bit" and chat.fitted["need"]["16bit"] > 16 * GiB * 0.95, chat.fitted
    assert isinstance(reply, str) and peak < 16, peak


def test_closing_an_8bit_chat_gives_its_gpu_memory_back(model_7b):
    """Chat.close drops bitsandbytes' int8 weights and scales, cuBLAS's workspaces and the cache: the next job has the card."""
    import torch

    from core.chat import Chat

    torch.cuda.empty_cache()
    # After empty_cache the reserved figure holds only blocks in use (and the segments they sit in).
    before, held = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    chat = Chat()
    chat.load(model_7b, precision="8bit")
    chat.reply([], "你好", GenerationConfig(temperature=0, max_new_tokens=4))
    assert torch.cuda.memory_allocated() - before > 6 * GiB
    chat.close()
    assert torch.cuda.memory_allocated() - before < 0.5 * GiB, torch.cuda.memory_allocated() / GiB
    # Given back to the driver too, where a training run in its own process can have it: one small block
    # left in use (cuBLAS's workspace of the chat's thread) kept the model's whole segment reserved.
    assert torch.cuda.memory_reserved() - held < 0.5 * GiB, torch.cuda.memory_reserved() / GiB


@pytest.mark.parametrize("shape", ["135m", "7b", "13b"])
@pytest.mark.parametrize("preset_name", ["tutorial", "default"])
def test_training_estimate_is_within_15_percent_of_the_real_peak(request, shape, preset_name):
    """Four steps of each preset as the panel runs them (`python -m core train`, a process of its own: the peak is
    the run's alone, not the models earlier tests loaded here); metrics.jsonl's peak against core.fit's estimate."""
    import os
    import subprocess
    import sys

    from core.data import prepare

    model = request.getfixturevalue({"135m": "model_135m", "7b": "model_7b", "13b": "model_13b"}[shape])
    data = scratch() / f"fit-data-{shape}"
    if not data.is_dir():
        # Rows longer than max_seq_length: every row is cut to full length, so packed rows are full and the
        # tutorial's unpacked batches are too (the estimate is for full batches; short rows pad to less).
        sample = [json.loads(x) for x in (ROOT / "assets" / "sample_zh.jsonl").read_text(encoding="utf-8").splitlines()]
        story = "".join(r["output"] for r in sample)
        rows = scratch() / f"fit-rows-{shape}.jsonl"
        rows.write_text("".join(json.dumps({**r, "output": story}, ensure_ascii=False) + "\n" for r in sample),
                        encoding="utf-8")
        prepare(PrepareConfig(input=str(rows), out=str(data), sample=0, template="seed", model=model))
    run = scratch() / f"fit-{shape}-{preset_name}"
    cfg = preset(preset_name, model=model, data=str(data), out=str(run), max_steps=4, logging_steps=1, save_steps=0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "core", "train", "--preset", preset_name, "--model", model,
                           "--data", str(data), "--out", str(run), "--max-steps", "4", "--logging-steps", "1",
                           "--save-steps", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    real = max(x["gpu_memory_gb"] for x in lines)
    estimate = fit.train_needs(fit.read_config(model), cfg, cuda=True, liger=fit.liger_installed())["peak"] / GiB
    if shape == "135m":  # the sample's rows are short: unpacked tutorial batches are padded to less than 512
        pytest.xfail(f"135M shape: estimate {estimate:.2f} GiB, real {real:.2f} GiB (small shapes are not calibrated)")
    assert estimate == pytest.approx(real, rel=0.15), (estimate, real)


def test_nf4_rounding_on_the_cpu_equals_bitsandbytes_on_the_gpu():
    """The "as trained" merge rounds on the CPU; training rounded on the GPU: the same numbers."""
    import torch
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    from core.fold import nf4_round

    torch.manual_seed(0)
    w = (torch.randn(1024, 768) * 0.02).to(torch.bfloat16)
    packed, state = quantize_4bit(w.cuda(), blocksize=64, compress_statistics=True, quant_type="nf4")
    on_gpu = dequantize_4bit(packed, state).float().cpu()
    assert torch.equal(nf4_round(w), on_gpu)  # the merge's own call rounds on the GPU where there is one
    # Without a GPU bitsandbytes' CPU kernels round: the same NF4 levels, with the block scales' own rounding
    # (double quantization) free to differ in the last bits. Measured and bounded rather than assumed equal.
    on_cpu = nf4_round(w, device="cpu")
    differ = (on_cpu != on_gpu).float().mean().item()
    relative = ((on_cpu - on_gpu).abs().max() / on_gpu.abs().max()).item()
    print(f"NF4 rounding, CPU against GPU: {differ:.2%} of weights differ, largest difference {relative:.2e} of the largest weight")
    assert relative <= 0.02, (differ, relative)


def test_as_trained_merge_answers_like_the_4bit_base_with_the_adapter(base_model):
    """The merged model (NF4-rounded base + delta, float32) against the run's own 4-bit base + adapter."""
    import torch
    from peft import PeftModel
    from test_train import identity_dataset
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from core import merge as merging
    from core import models
    from core.train import train

    # Training cast the base to bf16 before rounding it to NF4, and its 4-bit weights come back as bf16 numbers:
    # the reference is that bf16 copy's linear layers in 4-bit as training had them, with everything else
    # (embeddings, norms, head, the arithmetic) in float32 as in the merged model.
    cast = scratch() / "base-bf16"
    AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16).save_pretrained(cast)
    run = scratch() / "as-trained-run"
    result = train(preset("default", data=str(identity_dataset()), out=str(run), max_steps=8, logging_steps=4,
                          save_steps=0))
    assert result["state"] == "finished" and result["mode"].startswith("4-bit"), result
    out = scratch() / "as-trained-merged"
    report = merging.merge(MergeConfig(adapter=str(run / "adapter"), out=str(out), dtype="float32",
                                       base_weights="as-trained"))
    assert report["ok"] and report["rounded_tensors"] > 0, report
    tokenizer = models.load_tokenizer(base_model)
    probe = tokenizer(merging.PROBE, return_tensors="pt").to("cuda")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(cast, quantization_config=quant, dtype=torch.bfloat16,
                                                    device_map={"": 0})
        # The unquantized parts (embeddings, norms, the head) as the merge reads them: the base's own values in
        # float32, not the bf16 copy's. The 4-bit weights are uint8 and stay as they are.
        # Buffers too: loading in bf16 rounds the rotary frequencies (with them in bf16 the logits were 1.6% apart, H200).
        original = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        own = {**dict(original.named_parameters()), **dict(original.named_buffers())}
        for name, t in [*base.named_parameters(), *base.named_buffers()]:
            if t.dtype == torch.bfloat16:
                t.data = own[name].data.to(device=t.device, dtype=torch.float32)
        del original, own
        trained = PeftModel.from_pretrained(base, str(run / "adapter"))
        assert trained.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.quant_state.dtype == torch.bfloat16
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).cuda()
        after = merged(**probe).logits.float()
        # bitsandbytes' own 4-bit inference kernel, as a 4-bit chat runs it: it does not compute in float32 (on the
        # H200 one layer's outputs were 0.06 from float32 arithmetic, the logits 1.6% of the largest apart), so
        # against it the answer is what counts: the same top tokens.
        real = trained(**probe).logits.float()
        assert (real.argmax(-1) == after.argmax(-1)).float().mean().item() >= 0.95
        # The same 4-bit layers with bitsandbytes' own dequantized weights, in float32 arithmetic: the merged model
        # must equal them to float32 rounding.
        import bitsandbytes as bnb
        from bitsandbytes.functional import dequantize_4bit

        for parent in list(trained.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, bnb.nn.Linear4bit):
                    plain = torch.nn.Linear(child.in_features, child.out_features, bias=False, device="cuda")
                    plain.weight.data = dequantize_4bit(child.weight.data, child.weight.quant_state).float()
                    setattr(parent, name, plain)
        before = trained(**probe).logits.float()
    assert (before - after).abs().max().item() <= 1e-3 * before.abs().max().item()
