"""The panel in headless Chromium, clicked through like a person would: upload, save, train, merge, chat.

Screenshots of each tab (data.png, train.png, merge.png, chat.png, data_zh.png) go to a temporary
folder; `make screenshots` runs these tests with QLORA_STUDIO_SHOTS=docs/screenshots to refresh the
README's pictures. A test run never changes a tracked file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from test_app import SAMPLE, App

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("QLORA_STUDIO_SHOTS") or tempfile.mkdtemp(prefix="qlora-studio-shots-"))
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium fonts-noto-cjk)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory, base_model):
    a = App(tmp_path_factory.mktemp("browser"), base_model).start()
    yield a
    a.kill()


def fill(panel, label: str, value) -> None:
    box = panel.get_by_label(label, exact=False).first
    box.fill(str(value))
    box.press("Tab")


def choose(page, panel, label: str, option: str) -> None:
    panel.get_by_label(label, exact=True).first.click()
    page.get_by_role("option", name=option, exact=True).first.click()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


@pytest.fixture
def page(browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="en-US")
    page.set_default_timeout(30_000)
    yield page
    page.screenshot(path=str(tmp_path / "last.png"), full_page=True)  # what the page showed at the end
    page.close()


def test_click_through_the_four_tabs(app, page):
    page.goto(app.url)

    # 1. Data: upload, see the rendered preview, save 64 rows.
    data = page.locator("#tab-data")
    data.locator("input[type=file]").first.set_input_files(str(SAMPLE))
    # the detected layout above the preview (the file name in code type), once the preview is made
    data.locator("code", has_text="sample_zh.jsonl").first.wait_for()
    # The embedded model is an instruct model: its own chat template is chosen, and the page says why.
    data.get_by_text("the model's own chat template, which it already knows").wait_for()
    assert re.search("user\\s+[0-9\u4e00-\u9fff]", data.inner_text()), "the preview shows rendered rows"
    fill(data, "Rows to sample", 64)
    fill(data, "Eval share", 0.1)
    data.get_by_role("button", name="Save dataset").click()
    data.get_by_text("58 rows for training").wait_for(timeout=60_000)
    shot(page, "data.png")

    # 2. Train: the saved dataset is already chosen; a tiny run on the embedded model.
    page.get_by_role("tab", name="2 · Train").click()
    train = page.locator("#tab-train")
    assert "(58)" in train.get_by_label("Prepared dataset").first.input_value()
    for label, value in [("Run name", "browser"), ("Max steps", 3), ("Batch size", 2), ("Gradient accumulation", 1),
                         ("Max sequence length", 96), ("LoRA rank", 8), ("Log every N steps", 1), ("Save every N steps", 0)]:
        fill(train, label, value)
    # What the settings mean for this dataset, before anything runs.
    train.get_by_text("3 updates").wait_for(timeout=30_000)
    train.get_by_role("button", name="Start training").click()
    train.locator(".qs-running, .qs-starting").first.wait_for(timeout=60_000)
    train.locator(".qs-finished").wait_for(timeout=300_000)
    page.wait_for_timeout(2500)  # one more refresh of the chart
    points = train.locator(".vega-embed [aria-roledescription='point']")
    labels = [points.nth(i).get_attribute("aria-label") or "" for i in range(points.count())]
    trained = [lb for lb in labels if "series: train" in lb and "NaN" not in lb]
    assert len(trained) == 3, f"the loss chart shows a point per step: {labels}"
    shot(page, "train.png")
    # A reload shows the run next to the settings it was started with, not the defaults.
    page.reload()
    page.get_by_role("tab", name="2 · Train").click()
    page.wait_for_function("() => [...document.querySelectorAll('#tab-train input')].some(e => e.value === '96')")
    assert train.get_by_label("Max steps").first.input_value() == "3"
    assert train.get_by_label("LoRA rank").first.input_value() == "8"

    # 3. Merge: the finished run is offered, its base filled in.
    page.get_by_role("tab", name="3 · Merge").click()
    merge = page.locator("#tab-merge")
    choose(page, merge, "Run", "browser · finished")
    page.wait_for_function("() => [...document.querySelectorAll('#tab-merge textarea, #tab-merge input')]"
                           ".some(e => e.value === 'browser')")
    merge.get_by_role("button", name="Merge").click()
    merge.get_by_text("Merged model written to").wait_for(timeout=300_000)
    merge.get_by_text("Checked: the merged model gives the same answers as base + adapter").wait_for()
    shot(page, "merge.png")

    # 4. Chat: the merged model answers, streamed.
    page.get_by_role("tab", name="4 · Chat").click()
    chat = page.locator("#tab-chat")
    choose(page, chat, "Model", "merged 合并 · browser")
    fill(chat, "Message", "1加1等于几？")
    chat.get_by_role("button", name="Send").click()
    bot = chat.locator(".message.bot, [data-testid='bot']").first
    bot.wait_for(timeout=120_000)
    page.wait_for_function("() => { const b = document.querySelector('#tab-chat .message.bot, #tab-chat [data-testid=bot]');"
                           " return b && b.innerText.trim().length > 0; }", timeout=120_000)
    page.wait_for_timeout(3000)
    shot(page, "chat.png")


def test_chinese_browser_gets_chinese_labels(app, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    page.goto(app.url)
    page.get_by_role("tab", name="1 · 数据").wait_for()
    page.get_by_role("button", name="保存数据集").wait_for(timeout=30_000)
    assert re.search("用你自己的指令数据微调", page.content())
    shot(page, "data_zh.png")
    page.close()


def test_language_switches_at_run_time_from_settings(app, page):
    page.goto(app.url)
    page.get_by_role("tab", name="1 · Data").wait_for()
    page.get_by_text("Settings").last.click()
    page.get_by_label("Language").click()
    page.get_by_role("option", name="简体中文").first.click()
    page.keyboard.press("Escape")
    page.get_by_role("tab", name="1 · 数据").wait_for(timeout=10_000)
    assert page.get_by_role("tab", name="1 · Data").count() == 0


def bars(panel) -> list[tuple[str, int]]:
    """(bin, rows) of each bar of the histogram as the browser drew it, left to right (from the aria-labels)."""
    drawn = []
    marks = panel.locator(".vega-embed [aria-roledescription='bar']")
    for i in range(marks.count()):
        values = re.findall(r":\s*([^;]+)", marks.nth(i).get_attribute("aria-label") or "")
        box = marks.nth(i).bounding_box() or {"x": 0}
        drawn.append((box["x"], values[0].strip(), int(float(values[1].replace(",", "")))))
    return [(x, n) for _, x, n in sorted(drawn)]


def saved_histogram(home: Path, source: str) -> list[tuple[str, int]]:
    """(bin start, rows) of the dataset saved from `source`, from its manifest."""
    import json

    for manifest in (home / "datasets").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m["source"]["name"] == source:
            h = m["stats"]["histogram"]
            return [(str(s), n) for s, n in zip(h["starts"], h["counts"], strict=True)]
    raise AssertionError(f"no dataset saved from {source}")


def test_histogram_shows_the_dataset_just_saved(app, page, tmp_path):
    """Three saves in a row, with other token lengths each time: the bars are always the last one's, in order."""
    import json

    def rows(n, scale):
        return "".join(json.dumps({"instruction": f"Say {i} " + "word " * (scale * i), "input": "",
                                   "output": "ok " * (scale * i)}) + "\n" for i in range(1, n + 1))

    (tmp_path / "long_rows.jsonl").write_text(rows(30, 12))
    (tmp_path / "short_rows.jsonl").write_text(rows(25, 2))
    page.goto(app.url)
    data = page.locator("#tab-data")
    for source, n in [(ROOT / "assets" / "identity_en.jsonl", 40), (tmp_path / "long_rows.jsonl", 30),
                      (tmp_path / "short_rows.jsonl", 25)]:
        if data.get_by_label("Clear").count():  # the upload box holds the last file: empty it first
            data.get_by_label("Clear").first.click()
        data.locator("input[type=file]").first.set_input_files(str(source))
        data.locator("code", has_text=source.name).first.wait_for()
        # A new file: the previous dataset's statistics and bars are gone until this one is saved.
        data.get_by_text("rows for training").wait_for(state="detached", timeout=10_000)
        assert bars(data) == []
        fill(data, "Rows to sample", 0)
        data.get_by_role("button", name="Save dataset").click()
        data.get_by_text(f"{n} rows for training").wait_for(timeout=60_000)
        expected = saved_histogram(app.home, source.name)
        page.wait_for_timeout(2000)  # the chart redraws a moment later
        drawn = bars(data)
        assert drawn == expected, f"{source.name}: drawn {drawn}, saved {expected}"


def test_labels_tables_and_axes_have_room(app, browser):
    """Advanced labels on one line (in Chinese too), the Runs table scrolls sideways, the loss chart counts whole steps."""
    run = app.home / "runs" / "a-rather-long-run-name"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text('{"model": "default", "data": "d", "max_steps": 3, "batch_size": 2, "lora_r": 8}')
    (run / "metrics.jsonl").write_text("".join(f'{{"step": {i}, "loss": {2 - i / 10}, "max_steps": 3}}\n' for i in (1, 2, 3)))
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    page.goto(app.url)
    page.get_by_role("tab", name="2 · 训练").click()
    page.locator("#tab-train").get_by_text("高级设置").first.click()
    for name in ("双重量化", "信任远程代码", "梯度检查点"):
        label = page.locator("#tab-train label", has_text=name).first
        box = label.bounding_box()
        assert box and box["height"] < 40 and box["width"] > 60, (name, box)  # one line, not a character a line
    page.wait_for_function("() => document.querySelectorAll('#tab-train .vega-embed .role-axis-label text').length > 0")
    page.wait_for_timeout(2500)  # the chart's span comes with the first refresh
    ticks = page.locator("#tab-train .vega-embed .role-axis-label").first.locator("text").all_text_contents()
    assert ticks and all(t.lstrip("-").isdigit() for t in ticks), ticks
    page.get_by_role("tab", name="训练记录").click()
    page.locator("#runs-table th", has_text="最终损失").first.wait_for()
    wide = page.evaluate("() => [...document.querySelectorAll('#runs-table *')].some("
                         "e => e.scrollWidth > e.clientWidth + 20 && getComputedStyle(e).overflowX.match(/auto|scroll/))")
    header = page.locator("#runs-table th", has_text="最终损失").first.bounding_box()
    assert wide and header and header["height"] < 60, header
    page.close()


def test_the_fit_badge_shows_before_start_merge_and_send(app, page, tiny_adapter):
    """Train, Merge and Chat each say whether the job fits the free memory (RAM here: no GPU), before the button."""
    import json
    import shutil

    from core.config import preset

    run = app.home / "runs" / "fit-badge"
    if not run.exists():  # a finished run with an adapter, for the Merge tab
        shutil.copytree(tiny_adapter, run / "adapter")
        preset("default", data=str(app.home / "datasets" / "d"), out=str(run)).save(run / "config.json")
        (run / "status.json").write_text(json.dumps({"state": "finished", "adapter": str(run / "adapter")}))
    page.goto(app.url)
    page.get_by_role("tab", name="2 · Train").click()
    badge = page.locator("#fit-train .qs-fit")
    badge.wait_for(timeout=30_000)  # the badge refreshes every few seconds against the free memory
    assert re.search(r"needs about [\d.]+ GiB of (RAM|GPU memory), [\d.]+ GiB free", badge.inner_text())
    shot(page, "fit_train.png")

    page.get_by_role("tab", name="3 · Merge").click()
    merge = page.locator("#tab-merge")
    choose(page, merge, "Run", "fit-badge · finished")
    badge = page.locator("#fit-merge .qs-fit")
    badge.wait_for(timeout=30_000)
    assert "Merged tensor by tensor: no GPU needed." in badge.inner_text()
    merge.get_by_text("Which base weights").first.wait_for()
    shot(page, "fit_merge.png")

    page.get_by_role("tab", name="4 · Chat").click()
    badge = page.locator("#fit-chat .qs-fit")
    badge.wait_for(timeout=30_000)
    assert re.search(r"(needs about|Loads in) ", badge.inner_text())
    shot(page, "fit_chat.png")
