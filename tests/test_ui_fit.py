"""The fit badge next to Start, Merge and Load, and the retry with settings that fit after running out of memory."""

from __future__ import annotations

import json

import pytest

from core import fit
from core.config import TrainConfig, preset

GiB = 2**30


def machine(gpu_free=None, gpu_total=None, ram=64, ram_total=64):
    return lambda: {"gpu": None if gpu_free is None else int(gpu_free * GiB),
                    "gpu_total": None if gpu_free is None else int((gpu_total or gpu_free) * GiB),
                    "ram": int(ram * GiB), "ram_total": int(ram_total * GiB)}


def values(cfg: TrainConfig) -> list:
    from ui.train import SETTINGS

    return [getattr(cfg, n) for n in SETTINGS]


def test_train_badge_speaks_of_ram_without_a_gpu_and_of_changes_that_fit_on_a_small_card(base_model, monkeypatch):
    from ui.train import fit_badge

    cfg = preset("default", max_seq_length=256, batch_size=4)
    monkeypatch.setattr(fit, "machine", machine(ram=64))
    badge = fit_badge(None, "default", "", "default", *values(cfg))
    assert "qs-fit-fits" in badge and "✅ Fits: needs about" in badge and "GiB of RAM" in badge
    # A GPU with 1.2 GiB free of 8: 16 x 512 tokens, without Liger's loss, do not fit; a smaller batch does.
    monkeypatch.setattr(fit, "machine", machine(gpu_free=1.2, gpu_total=8))
    big = values(preset("default", liger_kernels=False))
    badge = fit_badge(None, "default", "", "default", *big)
    assert "⛔ Will not fit now" in badge and "GiB of GPU memory" in badge and "Fits with: batch " in badge
    zh = fit_badge(_Chinese(), "default", "", "default", *big)
    assert "现在放不下" in zh and "显存" in zh and "批大小" in zh
    assert fit_badge(None, "default", "", "default", *[None] * len(values(cfg))) == ""


class _Chinese:
    headers = {"accept-language": "zh-CN,zh;q=0.9"}


def test_an_out_of_memory_run_offers_a_retry_that_fills_the_form_and_starts(base_model, monkeypatch):
    from core import jobs, paths
    from ui import train

    run = paths.runs() / "oom-run"
    run.mkdir(parents=True)
    preset("default", data=str(paths.datasets() / "d"), out=str(run)).save(run / "config.json")
    (run / "status.json").write_text(json.dumps({"state": "failed", "error": "out of GPU memory (needed 2.00 GiB more)",
                                                "hint": "lower batch size"}), encoding="utf-8")
    monkeypatch.setattr(fit, "machine", machine(ram=64))  # the estimate says it fits: one real step down
    offer = train.retry_offer(str(run))
    assert offer["visible"] and offer["value"] == "Retry with settings that fit (batch 8, accumulation 2)"
    started = []

    def start_train(cfg, env=None):
        started.append(cfg)
        return jobs.Job("train", 0, cfg.out, 0.0, [])

    monkeypatch.setattr(jobs, "start_train", start_train)
    message, chosen, *form = train.retry(str(run), "")
    (cfg,) = started
    assert (cfg.batch_size, cfg.grad_accum, cfg.max_seq_length, cfg.resume) == (8, 2, 512, False)
    assert cfg.out.endswith("oom-run-fit") and chosen["value"] == cfg.out
    assert message == "Started again as oom-run-fit with batch 8, accumulation 2."
    assert form[train.SETTINGS.index("batch_size")]["value"] == 8
    # A run that failed for another reason, or finished, offers nothing.
    (run / "status.json").write_text(json.dumps({"state": "failed", "error": "data: bad row"}), encoding="utf-8")
    assert train.retry_offer(str(run))["visible"] is False


@pytest.mark.parametrize("free, expect", [(64, "✅ Fits"), (0.05, "⛔ Will not fit now")])
def test_merge_badge_says_the_merge_needs_no_gpu(tiny_adapter, monkeypatch, free, expect):
    import shutil

    from core import paths
    from ui.merge import fit_badge

    run = paths.runs() / "merge-fit"
    if not run.exists():
        shutil.copytree(tiny_adapter, run / "adapter")
    monkeypatch.setattr(fit, "machine", machine(gpu_free=20, ram=free))
    badge = fit_badge(None, str(run), "", "float16")
    assert expect in badge and "GiB of RAM" in badge and "no GPU needed" in badge


def test_chat_badge_names_the_precision_on_a_gpu_and_ram_on_the_cpu(base_model, monkeypatch):
    from ui.chat import fit_badge

    need = fit.needs(base_model)
    monkeypatch.setattr(fit, "machine", machine(ram=64))
    assert "✅ Fits" in fit_badge(None, "default", "auto") and "GiB of RAM" in fit_badge(None, "default", "auto")
    monkeypatch.setattr(fit, "machine", machine(gpu_free=need["16bit"] / GiB * 2, gpu_total=80))
    assert "✅ Loads in 16-bit" in fit_badge(None, "default", "auto")
    monkeypatch.setattr(fit, "machine", machine(gpu_free=(need["8bit"] + need["16bit"]) / 2 / GiB, gpu_total=80))
    assert "⚠️ Loads in 8-bit: 16-bit needs about" in fit_badge(None, "default", "auto")
    assert "choose Precision int4" in fit_badge(None, "default", "auto")  # it fits where 8-bit does
    assert "“精度”选为 int4" in fit_badge(_Chinese(), "default", "auto")
    monkeypatch.setattr(fit, "machine", machine(gpu_free=need["4bit"] / 2 / GiB, gpu_total=80))
    assert "⛔ Will not fit: even 4-bit needs" in fit_badge(None, "default", "auto")
    monkeypatch.setattr(fit, "machine", machine(gpu_free=(need["16bit"] - 1) / GiB, gpu_total=80))
    assert "int4" not in fit_badge(None, "default", "16bit")  # a precision chosen by hand: no advice
