"""core/recompute.py: the frozen products the recomputation skips, and the same gradients as without.

On a CPU the copies are plain copies; where a GPU is present the same tests run on its streams with pinned memory.
A tiny Llama with bitsandbytes 4-bit layers and LoRA on q_proj and v_proj, checkpointed the way a run is (trl's
arguments hand transformers' decoder layers core.recompute's context).
"""

from __future__ import annotations

import json

import pytest
import torch

from core import recompute
from core.recompute import Pinned, Stash

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MB = 2**20
TOKENS = 128  # a micro-batch: 2 rows of 64 positions


@pytest.fixture
def model(tmp_path):
    """The tiny checkpointed Llama, its frozen products counted per module: {name: calls}."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from core import trainer
    from core.config import TrainConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=128)
    net = LlamaForCausalLM(cfg).to(torch.bfloat16)
    net.config.use_cache = False
    for layer in net.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name, lin in list(block.named_children()):
                if isinstance(lin, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.bfloat16,
                                          quant_type="nf4")
                    q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4")
                    setattr(block, name, q)
    net.to(DEVICE)
    for p in net.parameters():
        p.requires_grad_(False)
    net.enable_input_require_grads()
    net = get_peft_model(net, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    for _, lora_b in ((n, m) for n, m in net.named_modules() if n.endswith("lora_B.default")):
        torch.nn.init.normal_(lora_b.weight, std=0.02)  # not zero: the gradients reach every layer's input
    # The checkpoint arguments a run hands transformers (core.trainer), with the recomputation's context.
    run = tmp_path / "run"
    args = trainer.sft_args(TrainConfig(model="m", data="d", out=str(run)), run, trainer.device(TrainConfig()), [], False)
    kwargs = next(v for k, v in vars(args).items() if k.endswith("checkpointing_kwargs") and v)
    assert kwargs["context_fn"] is recompute.RECOMPUTE and json.loads(args.to_json_string())
    enable = getattr(net, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    net.train()

    calls: dict[str, int] = {}
    def counting(inner, name):
        def counted(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return inner(*a, **k)
        return counted

    for name, module in net.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.forward = counting(module.forward, name.removesuffix(".base_layer").split(".")[-1])
    return net, calls


def step(net, ids, ctx=None):
    """One micro-batch's forward and backward pass (inside `ctx`): its loss and gradients."""
    import contextlib

    net.zero_grad(set_to_none=True)
    with ctx or contextlib.nullcontext():
        loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def batch(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 96, (2, TOKENS // 2), generator=g).to(DEVICE)


def stash_of(budget: int, **kw) -> Stash:
    pinned = Pinned(budget, chunk=1 * MB, pin=DEVICE == "cuda")
    pinned.wait()
    return Stash(pinned, device=DEVICE, **kw)


@pytest.mark.parametrize("keep", [0, 1 << 30])
def test_kept_outputs_give_the_same_gradients_and_the_recomputation_skips_their_products(model, keep):
    """All of them brought back from CPU memory (`keep` 0), or the newest held on the GPU as well (here all)."""
    net, calls = model
    stash = stash_of(16 * MB, keep=keep)
    assert stash.attach(net) == 3 * 7
    assert stash.attach(net) == 0  # not wrapped twice
    for seed in (1, 2, 3):  # the first micro-batch also learns which outputs the recomputation asks for
        ids = batch(seed)
        calls.clear()
        plain_loss, plain = step(net, ids)
        # Without the stash each layer recomputes its six products before down_proj (torch stops there).
        assert calls == {"q_proj": 6, "k_proj": 6, "v_proj": 6, "o_proj": 6, "gate_proj": 6, "up_proj": 6,
                         "down_proj": 3}, calls
        calls.clear()
        loss, grads = step(net, ids, stash)
        assert torch.equal(loss, plain_loss)
        for name, g in plain.items():
            assert torch.equal(grads[name], g), name
        # With it, every product is made once, in the forward pass.
        assert calls == {n: 3 for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    # down_proj's output was kept once and never asked for: it is not kept again.
    out = 2 * TOKENS * (4 * 64 + 2 * 128)  # bytes a micro-batch keeps of one layer, down_proj left out
    assert stash.kept == 3 * 3 * 6 + 3 and stash.handed == 3 * 3 * 6
    assert stash.bytes_handed == 3 * 3 * out
    assert len(stash.useless) == 3


@pytest.mark.parametrize("budget, lag, kept", [(2 * 2 * TOKENS * 64 + 1024, 1 << 30, 2), (64 * MB, 0, 0)])
def test_what_does_not_fit_the_memory_or_the_bus_is_recomputed_as_before(model, budget, lag, kept):
    """Room for two of the 64-wide outputs in pinned memory, or no lag allowed for the copies: the rest is
    recomputed, the gradients stay the same."""
    net, calls = model
    ids = batch(4)
    plain_loss, plain = step(net, ids)
    stash = stash_of(budget, lag=lag)
    stash.attach(net)
    calls.clear()
    loss, grads = step(net, ids, stash)
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(grads[n], g) for n, g in plain.items())
    assert stash.kept == kept and stash.handed == kept and stash.skipped == 3 * 7 - kept
    assert sum(calls.values()) == 3 * 7 + 3 * 6 - kept


def test_an_output_changed_in_place_after_it_was_kept_is_recomputed(model):
    """A layer whose output the model changes in place afterwards: the kept copy may hold either value, so it is
    void, and the recomputation makes that product again."""
    net, calls = model
    first = net.base_model.model.model.layers[0].mlp
    mlp_forward = first.forward

    def doubling(x):
        gate = first.gate_proj(x)
        gate.mul_(2)
        return first.down_proj(torch.nn.functional.silu(gate) * first.up_proj(x))

    first.forward = doubling
    ids = batch(5)
    plain_loss, plain = step(net, ids)
    stash = stash_of(16 * MB)
    stash.attach(net)
    calls.clear()
    loss, grads = step(net, ids, stash)
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(grads[n], g) for n, g in plain.items())
    assert calls["gate_proj"] == 3 + 1  # layer 0's again; the other layers' come from the stash
    assert stash.handed == 3 * 6 - 1
    first.forward = mlp_forward


def test_outside_a_micro_batch_and_without_gradients_nothing_is_kept(model):
    net, calls = model
    stash = stash_of(16 * MB)
    stash.attach(net)
    ids = batch(6)
    step(net, ids)  # not entered
    with stash, torch.no_grad():
        net(input_ids=ids)  # an evaluation
    assert stash.kept == 0 and stash.skipped == 0


def test_pinned_memory_is_handed_out_from_whole_chunks_and_reset():
    pinned = Pinned(3 * 1024, chunk=1024, pin=False)
    pinned.wait()
    assert pinned.reserved == 3 * 1024
    like = torch.empty(200, dtype=torch.bfloat16)  # 400 bytes
    a, b = pinned.take(like), pinned.take(like)
    assert pinned.take(like) is not None and (pinned.index, pinned.offset) == (1, 400)  # the third opened chunk 2
    assert a.data_ptr() != b.data_ptr()
    assert pinned.take(torch.empty(2048, dtype=torch.uint8)) is None  # larger than a chunk
    for _ in range(3):
        assert pinned.take(like) is not None
    assert pinned.take(like) is None  # all three chunks used
    pinned.reset()
    assert pinned.take(like).data_ptr() == a.data_ptr()
    assert Pinned(0).take(like) is None
