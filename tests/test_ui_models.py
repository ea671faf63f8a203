"""The Models tab: the list in both languages, the progress of a download as the page shows it, one-line problems."""

from __future__ import annotations

import html
import time

import pytest

from core import status
from ui import models
from ui.i18n import SAY


class Request:
    def __init__(self, language):
        self.headers = {"accept-language": language}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    return tmp_path


def test_the_list_speaks_the_readers_language_and_says_when_there_is_no_gpu(home, base_model):
    en, zh = models.table(Request("en")), models.table(Request("zh-CN,zh"))
    assert list(en.columns)[-1] == "folder" and list(zh.columns)[-1] == "文件夹"
    default = en.iloc[0]
    assert default["name"].startswith("default") and default["architecture"] == "LlamaForCausalLM"
    assert default["parameters"] == "135M" and default["chat template"] == "yes"
    assert default["fits the GPU for training"] == "no GPU here"  # this machine has none
    assert zh.iloc[0]["显存够对话吗"] == "本机没有显卡"
    assert "No GPU on this machine" in models.gpu_note(Request("en"))


def write(home, **fields):
    folder = home / "models" / ".tiny.job"
    folder.mkdir(parents=True, exist_ok=True)
    status.write_json(folder / status.FILE, {**status.FIELDS, "started": time.time(), "message": "me/tiny", **fields})
    return folder


@pytest.mark.parametrize("fields, en, zh", [
    (dict(state="running", pid=None, bytes_done=3 * 2**20, bytes_total=12 * 2**20, speed=2**20, eta=9),
     "Downloading me/tiny: 3.0 MB of 12.0 MB · 1.0 MB/s · 9s left", "正在下载 me/tiny：3.0 MB / 12.0 MB · 1.0 MB/秒 · 还需 9s"),
    (dict(state="stopped", bytes_done=3 * 2**20, bytes_total=12 * 2**20),
     "Stopped the download of me/tiny at 3.0 MB of 12.0 MB. Start it again", "再次开始下载会从中断处继续"),
    (dict(state="failed", error="repo: me/tiny is gated or private: accept its terms"),
     "The download of me/tiny failed: repo: me/tiny is gated", "me/tiny 下载失败：repo: me/tiny is gated"),
])
def test_progress_as_the_page_shows_it(home, fields, en, zh):
    folder = write(home, **fields)
    assert models.shown() == folder
    page = models.progress_html(folder, "en")
    assert en in page and zh in models.progress_html(folder, "zh")
    if fields["state"] == "running":
        assert f'<progress value="{3 * 2**20}" max="{12 * 2**20}"' in page


def test_a_sampled_dataset_is_shown_as_a_data_file(home):
    folder = home / "data" / ".belle-300.jsonl.job"
    folder.mkdir(parents=True)
    path = str(home / "data" / "belle-300.jsonl")
    status.write_json(folder / status.FILE, {**status.FIELDS, "state": "running", "progress": 0.5,
                                             "message": "me/belle · streaming"})
    assert models.shown() == folder
    assert "Streaming me/belle: 50% of the sample taken" in models.progress_html(folder, "en")
    status.write_json(folder / status.FILE, {**status.FIELDS, "state": "finished", "progress": 1.0,
                                             "report": {"repo": "me/belle", "rows": 300, "path": path}})
    assert f"随机抽取 300 条，保存为 <code>{path}</code>" in models.progress_html(folder, "zh")
    cfg = models.config("me/belle", "huggingface", "", "", False, "dataset", 300)
    assert cfg.out == path and cfg.kind == "dataset"


def test_a_wrong_hub_id_or_a_missing_mirror_address_is_one_line(home):
    said, timer = models.start("not a repo", "huggingface", "", "", False)
    said = html.unescape(said)
    assert said.startswith("⚠️ Hub id (owner/name): 'not a repo' is not a hub id") and "\n" not in said
    # Not a hub id, and not a folder name either: the id is what is wrong (the name, made from it, said "no '/'").
    said, _ = models.start("hello world!!", "huggingface", "", "", False)
    assert html.unescape(said).startswith("⚠️ Hub id (owner/name): 'hello world!!' is not a hub id"), said
    said, _ = models.start("me/tiny", "mirror", "", "", False)
    assert "Mirror address: give the mirror's address" in html.unescape(said)
    said, _ = models.start("me/tiny", "huggingface", "", "../up", False)
    assert said.startswith("⚠️ Name:")
    assert models.stop(Request("en")) == SAY["en"]["dl_nothing"]


def test_the_log_box_leaves_out_the_report_printed_for_a_terminal(home):
    folder = write(home, state="finished", progress=1.0)
    (folder / "download.log").write_text('[ 90%] me/tiny\n[100%] me/tiny\n{"path": "/x", "repo": "me/tiny"}\n',
                                         encoding="utf-8")
    assert models.log_text(folder) == "[ 90%] me/tiny\n[100%] me/tiny"
    assert models.log_text(None) == ""
