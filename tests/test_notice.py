"""A notice when a job ends: the tab title and a browser notification, from the job status the panel polls."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from core import jobs, status
from ui import notice


class Reader:
    def __init__(self, language: str):
        self.headers = {"accept-language": language}


def fake_job(home: Path, kind: str, name: str, state: str, **fields) -> Path:
    """A job record and its status, as the job manager writes them; the job's pid is this live process."""
    folder = home / ("runs" if kind == "train" else "merged") / (name if kind == "train" else f".{name}.job")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    status.write_json(home / jobs.LANE_FILES[jobs.lane(kind)], {"kind": kind, "pid": os.getpid(), "folder": str(folder),
                                                       "started": started, "argv": [kind],
                                                       "log": str(folder / f"{kind}.log")})
    status.write_json(folder / status.FILE, {**status.FIELDS, "state": state, "pid": os.getpid(), **fields})
    return folder


def test_the_newest_jobs_end_in_words_in_both_languages(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    assert notice.latest(Reader("en")) == []
    fake_job(tmp_path, "merge", "my-model", "running")
    [seen] = notice.latest(Reader("en"))
    assert seen["state"] == "running" and seen["lane"] == "work" and "title" not in seen
    fake_job(tmp_path, "merge", "my-model", "finished")
    assert notice.latest(Reader("en"))[0]["title"] == "✓ finished · QLoRA Studio"
    assert notice.latest(Reader("en"))[0]["body"] == "Merge my-model: finished"
    fake_job(tmp_path, "train", "run-1", "failed", error="out of GPU memory")
    [failed] = notice.latest(Reader("zh-CN"))
    assert failed["title"] == "✗ 失败 · QLoRA Studio" and failed["body"] == "训练任务 run-1：失败 — out of GPU memory"
    assert jobs.last().kind == "train"


def test_a_run_that_ends_while_a_download_goes_on_is_still_told(tmp_path, monkeypatch):
    """Two lanes: the download started later is the newest job, and the training run's end is reported all the same."""
    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    run = fake_job(tmp_path, "train", "run-2", "running")
    fake_job(tmp_path, "download", "big-model", "running")
    assert {j["lane"]: j["state"] for j in notice.latest(Reader("en"))} == {"work": "running", "download": "running"}
    status.write_json(run / status.FILE, {**status.read_json(run / status.FILE), "state": "finished"})
    told = {j["lane"]: j for j in notice.latest(Reader("en"))}
    assert told["work"]["title"] == "✓ finished · QLoRA Studio" and told["work"]["body"] == "Training run-2: finished"
    assert told["download"]["state"] == "running" and jobs.last().kind == "download"


@pytest.mark.browser
def test_the_page_changes_its_title_and_notifies_when_a_job_ends(tmp_path_factory, base_model):
    from test_app import App
    from test_browser import ARGS, CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    app = App(tmp_path_factory.mktemp("notice"), base_model).start()
    try:
        folder = fake_job(app.home, "export", "gguf", "running")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(locale="en-US")
            context.grant_permissions(["notifications"], origin=app.url)
            # Notifications shown by the page are recorded where the test can read them.
            context.add_init_script("""(() => {
                const Real = window.Notification; window.shown = [];
                window.Notification = class extends Real {
                    constructor(title, options) { super(title, options); window.shown.push([title, options.body]); }
                };
                window.Notification.requestPermission = Real.requestPermission.bind(Real);
            })()""")
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(app.url)
            page.locator("#notice-ask").click()  # asking happens on a click, never on load
            page.wait_for_function("window.qlsJobs && window.qlsJobs.work && window.qlsJobs.work.state === 'running'")
            assert page.title() == "QLoRA Studio"
            now = status.read_json(folder / status.FILE)
            status.write_json(folder / status.FILE, {**now, "state": "finished", "ended": time.time()})
            page.wait_for_function("document.title.startsWith('✓')")
            assert page.title() == "✓ finished · QLoRA Studio"
            assert page.evaluate("window.shown") == [["✓ finished · QLoRA Studio", "Export gguf: finished"]]
            assert json.loads(page.evaluate("JSON.stringify(Notification.permission)")) == "granted"
            browser.close()
    finally:
        app.kill()
