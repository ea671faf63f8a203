"""FP8 multiplications for the frozen 4-bit base weights (core/fp8.py): the same products as bitsandbytes
within FP8's rounding, the same gradients, nothing kept for the backward pass, and a clear way out where
the path cannot run. torch's _scaled_mm runs on the CPU too, so all but the speed is checked here."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from core import fp8  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def linear4bit(k: int, n: int, seed: int = 0, double_quant: bool = True, weight: torch.Tensor | None = None):
    """A bitsandbytes NF4 layer of `weight` (random when not given) on DEVICE."""
    torch.manual_seed(seed)
    lin = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                            compress_statistics=double_quant)
    w = (torch.randn(n, k) * 0.02).to(torch.bfloat16) if weight is None else weight
    lin.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=double_quant)
    return lin.to(DEVICE)  # quantized on the move


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_rows_round_each_row_to_fp8_with_its_own_scale_and_never_overflow():
    t = torch.randn(32, 64, dtype=torch.bfloat16) * torch.logspace(-3, 3, 32).to(torch.bfloat16)[:, None]
    t[5] = 0  # an all-zero row stays zero, not NaN
    q, scale = fp8.rows(t)
    assert q.dtype == torch.float8_e4m3fn and q.is_contiguous() and scale.shape == (32, 1)
    back = q.float() * scale
    assert torch.isfinite(back).all() and (back[5] == 0).all()
    assert q.float().abs().max() <= 448
    # each row keeps FP8's relative precision (3 mantissa bits), whatever its magnitude
    for i in (0, 16, 31):
        assert rel(back[i], t[i]) < 0.04
    tq, tscale = fp8.rows(t.t())  # a transposed view comes back row-major
    assert tq.is_contiguous() and tscale.shape == (64, 1)


@pytest.mark.parametrize("double_quant", [True, False])
def test_the_weight_in_fp8_is_bitsandbytes_weight_within_fp8_rounding_in_both_layouts(double_quant):
    lin = linear4bit(128, 96, double_quant=double_quant)
    ref = bnb.functional.dequantize_4bit(lin.weight.data, lin.weight.quant_state).float()
    q, scale = fp8.weight(lin)
    qt, scale_t = fp8.weight(lin, transposed=True)
    assert q.shape == (96, 128) and scale.shape == (1, 96) and qt.shape == (128, 96) and scale_t.shape == (1, 128)
    assert rel(q.float() * scale.t(), ref) < 0.035
    assert rel((qt.float() * scale_t.t()).t(), ref) < 0.035


def test_a_layer_in_fp8_gives_bitsandbytes_products_and_input_gradients_within_fp8_rounding():
    attn, mlp = linear4bit(256, 512, seed=1), linear4bit(256, 128, seed=2)
    x = torch.randn(2, 64, 256, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    g1, g2 = torch.randn(2, 64, 512, device=DEVICE), torch.randn(2, 64, 128, device=DEVICE)

    def run(x):
        x.grad = None
        y1, y2 = attn(x), mlp(x)  # two layers reading one input, as q, k and v do
        torch.autograd.backward([y1, y2], [g1.to(y1.dtype), g2.to(y2.dtype)])
        return y1.detach(), y2.detach(), x.grad.clone()

    ref = run(x)
    assert fp8.use(torch.nn.ModuleList([attn, mlp])) == 2
    out = run(x)
    for a, b in zip(out, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert 0 < rel(a, b) < 0.06  # changed (it is FP8), by FP8's rounding only


def test_shapes_fp8_cannot_take_go_through_bitsandbytes_unchanged():
    lin = linear4bit(256, 512)
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16, device=DEVICE)  # 15 rows: not a multiple of 16
    ref = lin(x)
    fp8.use(lin)
    assert torch.equal(lin(x), ref)
    assert torch.equal(lin(x.float()).float(), lin.__class__.forward(lin, x.float()).float())  # float32 input


def test_nothing_of_the_input_is_kept_for_the_backward_pass():
    lin = linear4bit(256, 256)
    fp8.use(lin)
    x = torch.randn(64, 256, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lin(x).sum().backward()
    assert saved == [] and x.grad is not None


def stack(n: int = 3):
    return torch.nn.ModuleList(linear4bit(128, 128, seed=s) for s in range(n))


@pytest.fixture
def fp8_products(monkeypatch) -> list:
    """Grows by one for every FP8 product (torch._scaled_mm call) from here on."""
    calls = []
    scaled_mm = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1) or scaled_mm(*a, **k))
    return calls


def checkpoint_kwargs(fp8_base: str, run) -> dict:
    """What trl's arguments of a run with this `fp8_base` hand torch's checkpoint, and those arguments."""
    from core import trainer
    from core.config import TrainConfig

    cfg = TrainConfig(model="m", data="d", out=str(run), fp8_base=fp8_base)
    args = trainer.sft_args(cfg, run, trainer.device(cfg), [], False)
    return next(v for k, v in vars(args).items() if k.endswith("checkpointing_kwargs") and v), args


def checkpointed_loss(layers, x, **kw):
    from torch.utils.checkpoint import checkpoint

    h = x
    for layer in layers:
        h = checkpoint(lambda t, layer=layer: torch.tanh(layer(t)), h, use_reentrant=False, **kw)
    return h.float().pow(2).mean()


@pytest.mark.parametrize("mode, forward, backward", [("backward", 0, 6), ("all", 3, 6)])
def test_each_mode_multiplies_in_fp8_only_where_it_says(fp8_products, mode, forward, backward):
    """Three checkpointed layers: `forward` FP8 products in the forward pass, `backward` in the backward pass
    (the recomputed forward passes and the input gradients). "backward" gives bitsandbytes' own loss, since
    its forward pass is bf16; both modes change the gradient by FP8's rounding only."""
    layers = stack()
    x = torch.randn(64, 128, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    ref_loss = checkpointed_loss(layers, x)
    ref_loss.backward()
    ref_grad, x.grad = x.grad.clone(), None

    fp8.use(layers, mode)
    loss = checkpointed_loss(layers, x, context_fn=fp8.RECOMPUTE)
    assert len(fp8_products) == forward
    loss.backward()
    assert len(fp8_products) == forward + backward
    if mode == "all":
        assert 0 < rel(loss.detach(), ref_loss.detach()) < 0.06
    else:
        assert torch.equal(loss, ref_loss), (loss, ref_loss)
    assert 0 < rel(x.grad, ref_grad) < 0.08


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="fp8 mode 'fast'"):
        fp8.use(stack(1), "fast")


def test_the_recompute_context_travels_in_the_training_arguments_and_they_still_serialize(tmp_path):
    """Mode "backward" hands torch's checkpoint its context through trl's arguments; wandb and tensorboard
    record those arguments as JSON."""
    import json

    kwargs, args = checkpoint_kwargs("backward", tmp_path)
    assert kwargs["context_fn"] is fp8.RECOMPUTE and json.loads(args.to_json_string())
    assert "context_fn" not in checkpoint_kwargs("all", tmp_path)[0]


def test_through_transformers_checkpointing_backward_mode_recomputes_in_fp8(fp8_products, tmp_path):
    """The wiring a run uses: trl's arguments carry RECOMPUTE to transformers' checkpointed decoder layers. A
    tiny Llama with 4-bit layers, checkpointed: the forward pass multiplies in bf16; in the backward pass each
    layer recomputes six base products in FP8 (torch stops before down_proj: nothing after it is kept) and
    takes seven input gradients in FP8. Without the context, the backward pass would have seven a layer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    for layer in model.model.layers:
        for block in (layer.self_attn, layer.mlp):
            for name, lin in list(block.named_children()):
                if isinstance(lin, torch.nn.Linear):
                    setattr(block, name, linear4bit(lin.in_features, lin.out_features, weight=lin.weight.data))
    model.to(DEVICE)
    assert fp8.use(model, "backward") == 14

    kwargs = checkpoint_kwargs("backward", tmp_path)[0]
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()

    ids = torch.randint(0, 64, (1, 32), device=DEVICE)
    loss = model(input_ids=ids, labels=ids).loss
    assert fp8_products == []
    loss.backward()
    assert len(fp8_products) == 2 * (6 + 7), len(fp8_products)


def test_a_run_folder_from_before_the_modes_reads_its_yes_or_no():
    from core.config import TrainConfig

    assert TrainConfig.from_dict({"fp8_base": False}).fp8_base == "off"
    assert TrainConfig.from_dict({"fp8_base": True}).fp8_base == "all"
    assert TrainConfig(fp8_base="sometimes").validate()[0].startswith("fp8_base: 'sometimes' is not one of")


def test_without_a_gpu_fp8_says_why_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert fp8.supported() == "no GPU"


@pytest.mark.gpu
def test_on_the_gpu_fp8_runs_and_a_training_step_moves_like_bf16():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    why = fp8.supported()
    if why:
        pytest.skip(why)
    torch.manual_seed(0)
    layers = [linear4bit(512, 1024, seed=s) for s in range(2)]
    lora = torch.nn.Linear(512, 1024, bias=False, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(16, 512, 512, dtype=torch.bfloat16, device="cuda")

    def grads():
        lora.weight.grad = None
        h = layers[0](x) + lora(x)
        loss = layers[1](h[..., :512] * 0.1).float().pow(2).mean()
        loss.backward()
        return loss.detach(), lora.weight.grad.clone()

    ref = grads()
    fp8.use(torch.nn.ModuleList(layers))
    out = grads()
    assert rel(out[0], ref[0]) < 0.02 and 0 < rel(out[1], ref[1]) < 0.08


def test_asked_for_where_it_cannot_run_the_run_says_it_is_ignored(base_model, caplog):
    from core import trainer
    from core.config import TrainConfig

    cfg = TrainConfig(model=base_model, data="d", out="o", fp8_base="all", quantization="none", lora_r=4)
    with caplog.at_level("INFO", logger="qlora_studio.train"):
        model = trainer.load_model(cfg, base_model, trainer.device(cfg))
    why = "it is for 4-bit base weights with bf16 compute" if torch.cuda.is_available() else "no GPU"
    assert f"fp8_base: {why}; ignored" in caplog.text
    assert not any("forward" in vars(m) for m in model.modules())  # no layer's forward was swapped
