"""Finding a model: the embedded default, local folders, hub ids that cannot be reached."""

from __future__ import annotations

import json
import time

import pytest

from core import models
from core.errors import UserError


def test_embedded_default_is_a_regular_safetensors_folder(base_model, tokenizer):
    folder = models.resolve("default")
    assert folder == base_model == models.resolve("")
    names = {p.name for p in models.embedded().iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".gguf"))]
    config = json.loads((models.embedded() / "config.json").read_text())
    assert "quantization_config" not in config  # a plain model, loadable anywhere
    # Turns end with <|im_end|> in SmolLM2's chat template: that must be the end of sequence too.
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    assert tokenizer.chat_template


def test_local_folders(tmp_path):
    with pytest.raises(UserError, match="folder ./no/such/model not found"):
        models.resolve("./no/such/model")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(UserError, match="not a model folder"):
        models.resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path)) == str(tmp_path.resolve())


def test_hub_id_offline_is_refused_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(UserError, match="not downloaded.*local folder"):
        models.resolve("someone/some-model")
    assert time.time() - t < 10


def test_hub_id_without_a_network_fails_fast_with_a_clear_message(monkeypatch):
    # A hub that refuses connections (nothing listens on port 9 here) stands in for no network.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t = time.time()
    with pytest.raises(UserError, match="could not download someone/some-model"):
        models.resolve("someone/some-model")
    assert time.time() - t < 30


def test_available_lists_the_default_and_workspace_models(workspace):
    folder = workspace / "models" / "my-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    found = models.available()
    assert found[0] == "default" and str(folder) in found
