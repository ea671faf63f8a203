"""A job sees one GPU: the environment a child gets on machines with none, one or several GPUs."""

from __future__ import annotations

import pytest

from core import gpus
from core.errors import UserError


def test_several_visible_gpus_become_the_first(monkeypatch):
    env = gpus.one({"CUDA_VISIBLE_DEVICES": "2,3", "PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["PATH"] == "/bin"
    monkeypatch.setattr(gpus, "count", lambda: 4)
    assert gpus.one({})["CUDA_VISIBLE_DEVICES"] == "0"
    assert gpus.one({}, gpu="3")["CUDA_VISIBLE_DEVICES"] == "3"


def test_one_gpu_or_none_or_a_launcher_leaves_the_environment_alone(monkeypatch):
    monkeypatch.setattr(gpus, "count", lambda: 1)
    assert gpus.one({"A": "b"}) == {"A": "b"}
    assert gpus.one({"CUDA_VISIBLE_DEVICES": "1"}) == {"CUDA_VISIBLE_DEVICES": "1"}
    monkeypatch.setattr(gpus, "count", lambda: 0)
    assert gpus.one({}) == {}
    launched = {"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert gpus.one(launched) == launched


def _cards(*used: float) -> list[dict]:
    return [{"index": i, "name": "NVIDIA H200", "memory_total_gb": 140.0, "memory_used_gb": u} for i, u in enumerate(used)]


def test_torch_numbers_the_gpus_a_process_sees_from_0(monkeypatch):
    monkeypatch.setattr(gpus, "count", lambda: 3)
    assert [gpus.torch_index(g, {}) for g in (0, 1, 2)] == [0, 1, 2]
    assert gpus.torch_index(2, {"CUDA_VISIBLE_DEVICES": "1,2"}) == 1
    with pytest.raises(UserError, match="GPU 0 is not one this panel can use"):
        gpus.torch_index(0, {"CUDA_VISIBLE_DEVICES": "1,2"})


def test_a_chat_model_goes_on_the_idle_gpu_with_the_most_free_memory(monkeypatch):
    monkeypatch.setattr(gpus, "count", lambda: 3)
    assert gpus.idlest(_cards(1, 80, 40), env={}) == (0, False)
    assert gpus.idlest(_cards(1, 80, 40), busy={0}, env={}) == (2, False)  # a run trains on GPU 0
    assert gpus.idlest(_cards(1, 80, 40), busy={0}, avoid={2}, env={}) == (1, False)  # the other chat model's
    assert gpus.idlest(_cards(1, 80, 40), busy={0, 1}, avoid={2}, env={}) == (2, False)  # no other idle GPU: shared
    assert gpus.idlest(_cards(1, 80, 40), busy={0, 1, 2}, env={}) == (0, True)  # all busy: the freest, said so
    assert gpus.idlest(_cards(1, 80, 40), env={"CUDA_VISIBLE_DEVICES": "1,2"}) == (2, False)  # only those it sees
    assert gpus.idlest([], env={}) is None


def test_the_gpus_of_the_running_training(monkeypatch, tmp_path):
    import json
    from types import SimpleNamespace

    from core import jobs

    monkeypatch.setattr(gpus, "count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(jobs, "current", lambda which=jobs.WORK: None)
    assert jobs.training_gpus() == set()
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(jobs, "current", lambda which=jobs.WORK: SimpleNamespace(kind="train", folder=str(run)))
    for picked, expected in (("", {0}), ("2", {2}), ("1,2", {1, 2})):
        (run / "config.json").write_text(json.dumps({"gpus": picked}))
        assert jobs.training_gpus() == expected, picked
    monkeypatch.setattr(jobs, "current", lambda which=jobs.WORK: SimpleNamespace(kind="merge", folder=str(run)))
    assert jobs.training_gpus() == set()


def test_giving_memory_back_never_hides_how_a_run_ended(monkeypatch):
    """A GPU in an error state fails every CUDA call: release_memory (a training run's last act, a closing chat's)
    logs that instead of raising over the run's own result."""
    import torch

    calls = []

    def broken(index=None):
        calls.append(index)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: 1)
    monkeypatch.setattr(torch.cuda, "synchronize", broken)
    gpus.release_memory()
    assert calls == [0]
