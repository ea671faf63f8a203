"""The panel driven through its API with gradio_client: data → train → merge → chat, as a user would.

The app runs as a real `python app.py` process on a free 127.0.0.1 port with its own workspace;
training and merging are real child processes on the embedded model (CPU, a few tiny steps).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample_zh.jsonl"
# Small enough for a CPU step in a few seconds, big enough to see the loss move.
TINY = dict(max_steps=3, logging_steps=1, batch_size=2, grad_accum=1, lora_r=8, lora_alpha=16,
            max_seq_length=96, save_steps=1, quantization="none")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """`python app.py` in a subprocess; restartable, like a user closing and reopening it."""

    def __init__(self, home: Path, base_model: str, *args: str):
        self.home, self.proc, self.url, self.args = home, None, "", list(args)
        self.env = {**os.environ, "QLORA_STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}

    def start(self):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(self.home / f"app-{port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *self.args], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                assert self.proc.poll() is None, (self.home / f"app-{port}.log").read_text()
                time.sleep(0.5)
        raise AssertionError("the panel did not come up")

    def kill(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)


@pytest.fixture(scope="module")
def app(tmp_path_factory, base_model):
    a = App(tmp_path_factory.mktemp("panel"), base_model).start()
    yield a
    from core import jobs

    # Stop whatever the panel's workspace still runs, then give the other tests their workspace back.
    before = os.environ["QLORA_STUDIO_HOME"]
    os.environ["QLORA_STUDIO_HOME"] = str(a.home)
    try:
        jobs.stop(grace=5)
    finally:
        os.environ["QLORA_STUDIO_HOME"] = before
        a.kill()


def settings(**overrides) -> list:
    from core.config import preset
    from ui.train import SETTINGS

    cfg = preset("default", **{**TINY, **overrides})
    return [getattr(cfg, n) for n in SETTINGS]


def start(client, dataset, model="default", name="", **overrides):
    return client.predict(model, dataset, "default", name, "", *settings(**overrides), api_name="/start")


def points(plot) -> list[tuple[int, str]]:
    """(step, series) of the loss chart's real points (sent as an update that also sets its titles)."""
    plot = (plot or {}).get("value", plot) or {}
    return [(row[0], row[2]) for row in plot.get("data", []) if row[1] is not None]


def wait_state(client, run, states, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        html, plot, log = client.predict(run, api_name="/poll")
        if any(f"qs-{s}'" in html for s in states):
            return html, plot, log
        time.sleep(1.5)
    raise AssertionError(f"run never reached {states}: {html}")


@pytest.fixture(scope="module")
def dataset(app):
    from gradio_client import handle_file

    c = app.client()
    source = c.predict(handle_file(str(SAMPLE)), api_name="/upload")["value"]
    assert Path(source).parent == app.home / "data"
    layout, table = c.predict(source, 64, 7, "seed", 0.1, 512, "default", False, "", api_name="/preview")
    assert "Alpaca/Belle" in layout and table["data"][0][0].startswith("### Human: ")
    stats, hist, folder = c.predict(source, 64, 7, "seed", 0.1, 512, "default", False, "belle64", api_name="/prepare")
    assert "64 picked" in stats and "58 rows for training" in stats
    # Only the rows are sent: an update that also set the chart's order or titles rebuilt it in the
    # browser, and the rebuilt chart could show the previous dataset's bars.
    assert hist.get("__type__") != "update" and set(hist) >= {"data", "columns"}, hist
    assert sum(row[1] for row in hist["data"]) == 64  # the histogram covers every sampled row
    assert [int(row[0]) for row in hist["data"]] == sorted(int(row[0]) for row in hist["data"])
    return folder


@pytest.fixture(scope="module")
def finished_run(app, dataset):
    c = app.client()
    message, viewed = start(c, dataset, name="first")
    run = viewed["value"]
    assert "Training started" in message and Path(run).name == "first"
    # While it runs: a second Start is refused with the reason, and a fresh page finds the run.
    refused, _ = start(app.client(), dataset, name="second")
    assert "a training run is already going: first" in refused
    assert app.client().predict(api_name="/reattach")[0]["value"] == run
    seen_running_points = 0
    end = time.time() + 240
    while time.time() < end:
        html, plot, _ = c.predict("", api_name="/poll")  # "" = whatever is running
        if "qs-running'" in html and points(plot):
            seen_running_points = len(points(plot))
        if "qs-finished'" in html:
            break
        time.sleep(1)
    assert seen_running_points >= 1, "the loss chart gained points while training ran"
    assert "Adapter saved" in html and (Path(run) / "adapter" / "adapter_config.json").is_file()
    assert [step for step, series in points(plot)] == [1, 2, 3]
    return run


def test_a_broken_row_is_named_when_the_file_is_chosen(app):
    """Line 7 of this file is broken, after the five rows the preview shows: the preview says so, by file name."""
    from gradio_client import handle_file

    c = app.client()
    source = c.predict(handle_file(str(ROOT / "tests" / "data" / "bad_json.jsonl")), api_name="/upload")["value"]
    layout, table = c.predict(source, 64, 7, "seed", 0.1, 512, "default", False, "", api_name="/preview")
    assert "bad_json.jsonl line 7: invalid JSON" in layout and "Skip broken rows" in layout, layout
    assert str(app.home) not in layout and not table["data"]
    skipped, table = c.predict(source, 64, 7, "seed", 0.1, 512, "default", True, "", api_name="/preview")
    assert "Alpaca/Belle" in skipped and table["data"]


def test_validation_messages_are_shown_next_to_the_form(app, dataset):
    message, _ = start(app.client(), dataset, lora_dropout=0.9, learning_rate=3.0)
    assert "LoRA dropout: must be between 0 and 0.5" in message and "Learning rate: " in message


def test_train_streams_metrics_then_finishes(finished_run):
    from core import runs, status

    assert status.read(finished_run)["state"] == "finished"
    assert len(runs.read_metrics(finished_run)) == 3


def test_bad_model_or_data_is_refused_before_anything_starts(app, dataset, finished_run):
    c = app.client()
    missing = app.home / "models" / "nothing"
    message, viewed = start(c, dataset, model=str(missing), name="bad")
    assert message == f"⚠️ Model: folder {missing} not found", message
    message, _ = start(c, str(app.home / "data"), name="bad")
    assert "is not a prepared dataset" in message
    assert not (app.home / "runs" / "bad").exists()


def test_stop_keeps_adapter_and_restart_reattaches(app, dataset, finished_run):
    c = app.client()
    _, viewed = start(c, dataset, name="long", max_steps=60, save_steps=0)
    run = viewed["value"]
    wait_state(c, run, ["running"])
    # Close the panel altogether: training must go on, and a new panel must find it.
    app.kill()
    app.start()
    c = app.client()
    assert c.predict(api_name="/reattach")[0]["value"] == run
    html, plot, _ = wait_state(c, "", ["running"])
    assert "long" in html
    end = time.time() + 120
    while not points(plot) and time.time() < end:
        html, plot, _ = c.predict("", api_name="/poll")
        time.sleep(1)
    assert points(plot), "the reattached panel shows the curve from the first step"
    assert "after the current step" in c.predict(api_name="/stop")
    html, _, _ = wait_state(c, run, ["stopped"], timeout=120)
    assert (Path(run) / "adapter" / "adapter_config.json").is_file()
    rows = c.predict(api_name="/runs")["data"]
    assert {r[0]: r[1] for r in rows}["long"] == "stopped (adapter kept)"
    # Resume names the run and its checkpoint and waits for a second press (a fresh page asks again).
    step = max(int(p.name.rsplit("-", 1)[1]) for p in (Path(run) / "checkpoints").glob("checkpoint-*"))
    message, _ = c.predict(run, "", api_name="/resume")
    assert f'"en">Resume **long** from checkpoint-{step}? Press Resume again to confirm.<' in message, message
    assert app.client().predict(run, "", api_name="/resume")[0] == message
    assert "qs-stopped'" in c.predict(run, api_name="/poll")[0], "nothing started on the first press"
    message, viewed = c.predict(run, "", api_name="/resume")
    assert '"en">Resuming long from its last checkpoint.<' in message and viewed["value"] == run
    assert "after the current step" in c.predict(api_name="/stop")
    wait_state(c, run, ["stopped", "failed", "finished"], timeout=120)


def test_the_form_shows_the_settings_of_the_run_shown(app, dataset, finished_run):
    """After a reload (or picking a run) the form holds that run's settings, not the defaults."""
    from ui.train import SETTINGS

    values = app.client().predict(finished_run, api_name="/run_settings")
    form = {k: v.get("value") for k, v in zip(["model", "data", "preset", *SETTINGS], values, strict=True)}
    assert (form["data"], form["preset"], form["max_steps"], form["lora_r"], form["max_seq_length"]) == (
        dataset, "default", 3, 8, 96), form
    assert form["quantization"] == "none" and form["save_steps"] == 1


def test_merge_then_chat_streams_a_reply(app, finished_run):
    pytest.importorskip("core.merge")
    pytest.importorskip("core.chat")
    c = app.client()
    base, out = c.predict(finished_run, api_name="/pick_run")
    assert base["value"] and out["value"] == "first"
    result, _ = c.predict(finished_run, base["value"], out["value"], "float32", api_name="/merge")
    merged = app.home / "merged" / "first"
    assert "Merged model written to" in result and (merged / "config.json").is_file()
    assert "Checked: the merged model gives the same answers as base + adapter" in result
    job = c.submit("1加1等于几？", [], [], str(merged), "default", "", "auto", 0.0, 1.0, 0, 1.1, 12, api_name="/chat")
    updates = list(job)
    assert len(updates) >= 3, "the reply arrives in pieces"
    _, hist_a, hist_b, note = job.result()
    assert hist_a[-1]["role"] == "assistant" and text(hist_a[-1]).strip()
    assert text(hist_b[-1]).strip(), "side by side: the base model answered too"
    # Regenerate: the last message answered again in both panes, in place of its replies (greedy: the same ones).
    _, again_a, again_b, note = c.predict("typed meanwhile", hist_a, hist_b, str(merged), "default", "", "auto", 0.0,
                                          1.0, 0, 1.1, 12, api_name="/regenerate")
    assert [text(m) for m in again_a] == [text(m) for m in hist_a] and len(again_a) == 2, (again_a, hist_a)
    assert [text(m) for m in again_b] == [text(m) for m in hist_b] and len(again_b) == 2, (again_b, hist_b)
    assert note.count("tokens/s, first token after") == 2, note


def test_clear_during_a_reply_stops_it_and_leaves_the_panes_empty(app):
    """Clear pressed while a reply is written: the reply ends at once and the panes end empty (the clearing comes
    after the reply's last words; emptied while it was written, the reply wrote them back)."""
    c = app.client()
    job = c.submit("Tell me a long story about the sea.", [], [], "default", "", "", "auto", 0.0, 1.0, 0, 1.0, 400,
                   api_name="/chat")
    deadline = time.time() + 120
    while time.time() < deadline and not any(text(m).strip() for m in (job.outputs()[-1][1] if job.outputs() else [])
                                             if m["role"] == "assistant"):
        time.sleep(0.1)
    assert not job.done(), "the reply ended before Clear could be pressed"
    hist_a, hist_b, note = c.predict(None, api_name="/clear_chat")
    assert hist_a == [] and hist_b == [] and note == ""
    _, written, _, said = job.result(timeout=30)
    import re

    made = re.findall(r"\((\d+) tokens\)", said)  # the speed line of the reply Clear stopped
    assert len(made) == 1 and 0 < int(made[0]) < 400 and text(written[-1]).strip(), said


def text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_share_without_auth_is_refused():
    done = subprocess.run([sys.executable, "app.py", "--share"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--share makes the panel public" in done.stderr and "--auth USER:PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_chinese_browser_gets_the_servers_own_text_in_chinese(app, finished_run):
    from gradio_client import Client

    zh = Client(app.url, verbose=False, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    html, plot, _ = zh.predict(finished_run, api_name="/poll")
    assert "已完成" in html and "步数 3 / 3" in html and "适配器已保存" in html
    assert (plot["x_title"], plot["y_title"]) == ("步数", "损失") and plot["colors_in_legend"] == ["训练", "评估"]
    assert {series for _, loss, series in plot["value"]["data"] if loss is not None} == {"训练"}  # each point named in Chinese
    table = zh.predict(api_name="/runs")
    assert table["headers"][:3] == ["名称", "状态", "进度"] and any(row[1] == "已完成" for row in table["data"])
    en = app.client().predict(api_name="/runs")
    assert en["headers"][:3] == ["name", "state", "step"]
