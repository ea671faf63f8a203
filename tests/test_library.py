"""The local models list: every model folder the panel may read, described from its files alone."""

from __future__ import annotations

import json

import pytest

from core import fit, library, models
from core.config import preset
from tests.fake_hub import tiny_model

# The tiny model of the fake hub: 49152 x 16 embeddings (tied head) and one small layer.
TINY_PARAMETERS = 49152 * 16 + 3 * 16 + 16 * 16 + 2 * 8 * 16 + 16 * 16 + 3 * 32 * 16


@pytest.fixture
def shelf(tmp_path, monkeypatch, base_model):
    """A workspace with a downloaded model, a merged one without a chat template, an allowed folder, a half download."""
    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("QLORA_STUDIO_ALLOW", str(tmp_path / "outside"))
    files = tiny_model(base_model)
    plain = {**files, "tokenizer_config.json": json.dumps({"tokenizer_class": "GPT2Tokenizer"}).encode()}
    plain.pop("chat_template.jinja")
    for folder, content in ((tmp_path / "ws" / "models" / "tiny", files),
                            (tmp_path / "ws" / "merged" / "plain", plain),
                            (tmp_path / "outside", files),
                            (tmp_path / "ws" / "models" / ".half.part", {"config.json": files["config.json"]})):
        folder.mkdir(parents=True)
        for name, data in content.items():
            (folder / name).write_bytes(data)
    return tmp_path


def test_every_local_model_with_its_numbers(shelf):
    found = {e["path"]: e for e in library.listing(None)}
    tiny, plain = str(shelf / "ws" / "models" / "tiny"), str(shelf / "ws" / "merged" / "plain")
    outside = str((shelf / "outside").resolve())
    assert set(found) == {str(models.embedded(convert=False)), tiny, plain, outside}  # never the half download
    assert found[tiny]["parameters"] == TINY_PARAMETERS == found[outside]["parameters"]
    assert found[tiny]["size_bytes"] == (shelf / "ws" / "models" / "tiny" / "model.safetensors").stat().st_size
    assert found[tiny]["architecture"] == "LlamaForCausalLM"
    assert found[tiny]["chat_template"] and not found[plain]["chat_template"]
    assert [found[p]["where"] for p in (tiny, plain, outside)] == ["workspace", "merged", "allowed"]
    default = library.listing(None)[0]
    assert default["spec"] == "default" and default["chat_template"]
    assert 134_000_000 < default["parameters"] < 136_000_000
    # Without a GPU nothing is claimed about fitting one.
    assert all(e["train_fit"] is None and e["chat_fit"] is None for e in found.values())
    # The Train tab offers the same folders.
    assert set(models.available()) == {"default", tiny, plain, outside}


def test_fit_follows_the_free_gpu_memory(shelf):
    folder = shelf / "ws" / "models" / "tiny"
    need = fit.needs(folder)
    roomy = library.describe(folder, fit.training_needs(folder) + need["16bit"])
    assert roomy["train_fit"] is True and roomy["chat_fit"] == "16bit"
    tight = library.describe(folder, need["4bit"])
    assert tight["chat_fit"] == "4bit"
    none = library.describe(folder, min(need["4bit"], fit.training_needs(folder)) - 1)
    assert none["train_fit"] is False and none["chat_fit"] == ""


def test_a_cut_off_weight_file_is_named_not_raised(shelf):
    folder = shelf / "ws" / "models" / "tiny"
    (folder / "model.safetensors").write_bytes(b"\x10\x00")
    entry = library.describe(folder, None)
    assert entry["problem"].startswith("weights unreadable") and entry["parameters"] is None


def test_training_needs_grow_with_the_model(base_model, shelf):
    # the Models list asks the same estimate as the fit check before Start (one estimate, not two)
    tiny = shelf / "ws" / "models" / "tiny"
    assert fit.training_needs(base_model) > fit.training_needs(tiny) > fit.CUDA_CONTEXT
    assert fit.training_needs(tiny) == fit.train_needs(fit.read_config(tiny), preset("default"), cuda=True,
                                                       liger=fit.liger_installed())["gpu"]
