"""The Train tab's progress panel, rendered from a run folder alone."""

import json

from ui.train import progress_html


def test_progress_says_what_the_engine_chose_and_why_a_run_failed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"max_steps": 10}))
    (run / "status.json").write_text(json.dumps({
        "state": "failed", "step": 4, "max_steps": 10, "started": 1.0, "ended": 61.0,
        "device": "cuda:0 NVIDIA H100 80GB HBM3", "mode": "4-bit NF4 (bf16 compute)",
        "error": "out of GPU memory", "hint": "lower batch size or max sequence length"}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 1.5, "tokens_per_second": 812.0}) + "\n")
    html = progress_html(str(run))
    assert "step 4 / 10" in html and "812 tokens/s" in html and "loss 1.5000" in html
    assert "4-bit NF4 (bf16 compute) · NVIDIA H100 80GB HBM3" in html
    assert "out of GPU memory" in html and "lower batch size" in html
