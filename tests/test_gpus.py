"""A job sees one GPU: the environment a child gets on machines with none, one or several GPUs."""

from __future__ import annotations

from core import gpus


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
