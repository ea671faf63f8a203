"""Downloading a model from a hub id, against a fake hub served here (no network): progress, resume, stop, errors."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core import hub, jobs, models, status
from core.config import DownloadConfig
from core.errors import UserError
from tests.fake_hub import FakeHub, FakeModelScope, tiny_model

RATE = 2 * 2**20  # bytes a second: the tiny model's 3 MB of weights take about a second and a half


@pytest.fixture(scope="module")
def fake(base_model):
    files = tiny_model(base_model)
    pickled = {"config.json": files["config.json"], "pytorch_model.bin": b"\x80\x02" + b"0" * 100}
    served = FakeHub({"me/tiny": files, "me/pickled": pickled}, gated=("me/gated",))
    served.files = files
    yield served
    served.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def online(monkeypatch):
    """The hub client in this process may go online (to the fake hub only: every address here is local)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def env(fake):
    return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": fake.url}


def wait_for(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_progress_then_the_model_appears_whole_and_is_offered(home, fake):
    fake.rate = RATE
    job = jobs.JobManager().start_download(DownloadConfig(repo="me/tiny"), env=env(fake))
    final = home / "models" / "tiny"
    midway = wait_for(lambda: (s := status.read(job.folder))["state"] == "running" and 0 < (s["bytes_done"] or 0)
                      < s["bytes_total"] and s["speed"] and s)
    assert midway["bytes_total"] == sum(len(b) for b in fake.files.values())
    assert midway["eta"] is not None and midway["eta"] > 0
    assert not final.exists()  # half a model never looks like a model
    assert str(final) not in models.available()
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    done = status.read(job.folder)
    assert done["state"] == "finished", done
    assert done["bytes_done"] == done["bytes_total"]
    for name, data in fake.files.items():
        assert (final / name).read_bytes() == data
    assert not (final / ".cache").exists() and not list(home.glob("models/.tiny.part"))
    assert str(final) in models.available()
    from ui import train

    assert str(final) in [c[1] if isinstance(c, tuple) else c for c in train.model_choices()]


def test_a_killed_download_resumes_from_the_bytes_on_disk(home, fake):
    fake.rate = RATE / 2
    manager = jobs.JobManager()
    job = manager.start_download(DownloadConfig(repo="me/tiny", out=str(home / "models" / "again")), env=env(fake))
    wait_for(lambda: (status.read(job.folder)["bytes_done"] or 0) > 2**20)
    os.kill(job.pid, signal.SIGKILL)  # a power cut, as far as the child can tell
    wait_for(lambda: not job.alive())
    assert status.read(job.folder)["state"] == "failed"
    fake.requests.clear()
    fake.rate = 0
    job = manager.start_download(DownloadConfig(repo="me/tiny", out=str(home / "models" / "again")), env=env(fake))
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    assert status.read(job.folder)["state"] == "finished"
    ranges = [r for m, p, r in fake.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert ranges and ranges[0] and int(ranges[0].split("=")[1].split("-")[0]) >= 2**20, fake.requests
    assert (home / "models" / "again" / "model.safetensors").read_bytes() == fake.files["model.safetensors"]


def test_stop_ends_as_stopped_and_keeps_nothing_that_looks_finished(home, fake):
    fake.rate = RATE / 4
    job = jobs.JobManager().start_download(DownloadConfig(repo="me/tiny"), env=env(fake))
    wait_for(lambda: (status.read(job.folder)["bytes_done"] or 0) > 0)
    jobs.JobManager().stop(job, grace=10)
    wait_for(lambda: not job.alive())
    now = wait_for(lambda: (s := status.read(job.folder))["state"] in status.FINAL and s)
    assert now["state"] == "stopped" and now["error"] is None
    assert "again" in now["hint"]
    assert not (home / "models" / "tiny").exists()


def test_a_gated_repo_ends_the_job_with_one_line(home, fake):
    job = jobs.JobManager().start_download(DownloadConfig(repo="me/gated"), env=env(fake))
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    now = status.read(job.folder)
    assert now["state"] == "failed"
    assert "me/gated is gated" in now["error"] and "HF_TOKEN" in now["error"] and "\n" not in now["error"]


@pytest.mark.parametrize("repo, allow_bin, says", [
    ("me/missing", False, "me/missing was not found on http"),
    ("me/pickled", False, "only pickle weights (pytorch_model.bin)"),
])
def test_missing_and_pickle_only_repos_are_refused_in_words(home, fake, online, repo, allow_bin, says):
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace(")", r"\)")):
        hub.download(DownloadConfig(repo=repo, source="mirror", endpoint=fake.url, allow_bin=allow_bin))
    assert not (home / "models" / repo.split("/")[1]).exists()


def test_pickle_weights_come_only_when_allowed(home, fake, online):
    fake.rate = 0
    report = hub.download(DownloadConfig(repo="me/pickled", source="mirror", endpoint=fake.url, allow_bin=True))
    assert (Path(report["path"]) / "pytorch_model.bin").is_file()


def test_unreachable_source_and_bad_settings_are_one_line(online, monkeypatch):
    with pytest.raises(UserError, match=r"source: http://127.0.0.1:9 cannot be reached"):
        hub.listing(DownloadConfig(repo="me/tiny", source="mirror", endpoint="http://127.0.0.1:9"))
    assert DownloadConfig(repo="not an id").validate()[0].startswith("repo: 'not an id' is not a hub id")
    assert DownloadConfig(repo="a/b", source="mirror").validate()[0].startswith("endpoint: give the mirror's address")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="downloads are switched off"):
        hub.listing(DownloadConfig(repo="me/tiny"))


# ---- a dataset from a hub id ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_hub():
    """A dataset of 60 000 Belle-style rows of 1 KB (60 MB): many times what a sample of a few hundred needs."""
    import json

    long = "好" * 330
    lines = (json.dumps({"instruction": f"问题 {i}", "input": "", "output": f"回答 {i} {long}"}, ensure_ascii=False)
             for i in range(60_000))
    served = FakeHub({"me/belle": {"train.jsonl": "\n".join(lines).encode()}}, gated=("me/secret",))
    yield served
    served.close()


def test_a_dataset_is_streamed_and_sampled_into_a_data_file(home, data_hub):
    job = jobs.JobManager().start_download(DownloadConfig(repo="me/belle", kind="dataset", rows=300, seed=7),
                                           env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": data_hub.url})
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    done = status.read(job.folder)
    assert done["state"] == "finished", done
    out = home / "data" / "belle-300.jsonl"
    assert done["report"]["path"] == str(out) and done["report"]["rows"] == 300
    import json

    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    numbers = [int(r["instruction"].split()[1]) for r in rows]
    assert len(set(numbers)) == 300 and numbers != sorted(numbers)  # picked at random, not the first 300
    # Streamed: each read of the file stopped well before its end.
    size = len(data_hub.repos["me/belle"]["train.jsonl"])
    assert data_hub.sent and 0 < max(data_hub.sent) < size / 2, (data_hub.sent, size)
    from core import data

    assert data.detect(out) == "alpaca"  # the Data tab takes it like an uploaded file


def test_a_gated_dataset_ends_the_job_with_one_line(home, data_hub):
    job = jobs.JobManager().start_download(DownloadConfig(repo="me/secret", kind="dataset", rows=5),
                                           env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": data_hub.url})
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    now = status.read(job.folder)
    assert now["state"] == "failed" and "\n" not in now["error"]
    assert now["error"].startswith("repo: me/secret is gated or private"), now["error"]


# ---- ModelScope ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def modelscope(base_model, tmp_path_factory):
    """A fake ModelScope site with the tiny model (and a sub-folder of another format), a gated repo.

    The client keeps a session id and lock files under MODELSCOPE_HOME and MODELSCOPE_CACHE: both point
    into a temporary folder, here and in the download jobs, and the client's process-wide settings are
    made again from them.
    """
    from modelscope_hub.config import set_default_config

    files = tiny_model(base_model)
    served = FakeModelScope({"me/tiny": {**files, "onnx/model.onnx": b"\0" * 1000}, "me/gated": files},
                            gated=("me/gated",))
    served.files = files
    client = tmp_path_factory.mktemp("modelscope")
    served.env = {"MODELSCOPE_HOME": str(client / "home"), "MODELSCOPE_CACHE": str(client / "cache")}
    saved = {k: os.environ.get(k) for k in served.env}
    os.environ.update(served.env)
    set_default_config(None)
    yield served
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v
    set_default_config(None)
    served.close()


def fetched(fake, name, repo="me/tiny"):
    """The Range header of each download of `name` the fake ModelScope answered (None: from the start)."""
    return [r for m, p, r in fake.requests if m == "GET" and p.startswith(f"/api/v1/models/{repo}/repo?")
            and p.endswith(f"FilePath={name}")]


def test_modelscope_download_shows_progress_and_the_model_appears_whole(home, modelscope):
    modelscope.rate, modelscope.requests[:] = RATE, []
    # The address as a user of another ModelScope site sets it: MODELSCOPE_ENDPOINT, the endpoint field left empty.
    job = jobs.JobManager().start_download(DownloadConfig(repo="me/tiny", source="modelscope"),
                                           env={**modelscope.env, "MODELSCOPE_ENDPOINT": modelscope.url})
    final = home / "models" / "tiny"
    midway = wait_for(lambda: (s := status.read(job.folder))["state"] == "running" and 0 < (s["bytes_done"] or 0)
                      < s["bytes_total"] and s["speed"] and s)
    assert midway["bytes_total"] == sum(len(b) for b in modelscope.files.values())  # the sub-folder is not fetched
    assert midway["eta"] is not None and midway["eta"] > 0
    assert not final.exists() and str(final) not in models.available()
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    done = status.read(job.folder)
    assert done["state"] == "finished", done
    assert done["bytes_done"] == done["bytes_total"] and done["report"]["source"] == "modelscope"
    assert sorted(p.name for p in final.iterdir()) == sorted([*modelscope.files, models.RECORD])
    for name, data in modelscope.files.items():
        assert (final / name).read_bytes() == data
    assert not (final / ".cache").exists() and not list(home.glob("models/.tiny.part"))
    assert str(final) in models.available()
    # It came through ModelScope's API: its listing, then each file by its path.
    assert ("GET", "/api/v1/models/me/tiny/repo/files?Revision=master&Recursive=True", None) in modelscope.requests
    assert fetched(modelscope, "model.safetensors") == [None] and fetched(modelscope, "config.json") == [None]
    assert not fetched(modelscope, "onnx%2Fmodel.onnx")


def test_modelscope_stop_ends_as_stopped_and_keeps_nothing_that_looks_finished(home, modelscope):
    modelscope.rate, modelscope.requests[:] = RATE / 4, []
    job = jobs.JobManager().start_download(DownloadConfig(repo="me/tiny", source="modelscope",
                                                          endpoint=modelscope.url), env=modelscope.env)
    part = home / "models" / ".tiny.part"
    wait_for(lambda: (part / "model.safetensors.incomplete").is_file())  # the weights are on their way
    jobs.JobManager().stop(job, grace=10)
    wait_for(lambda: not job.alive())
    now = wait_for(lambda: (s := status.read(job.folder))["state"] in status.FINAL and s)
    assert now["state"] == "stopped" and now["error"] is None and "again" in now["hint"]
    assert not (home / "models" / "tiny").exists() and str(home / "models" / "tiny") not in models.available()
    assert not (part / "model.safetensors").exists() and (part / "model.safetensors.incomplete").is_file()
    assert fetched(modelscope, "model.safetensors")


def test_a_killed_modelscope_download_resumes_from_the_bytes_on_disk(home, modelscope):
    modelscope.rate, modelscope.requests[:] = RATE / 2, []
    manager, out = jobs.JobManager(), str(home / "models" / "again")
    cfg = DownloadConfig(repo="me/tiny", source="modelscope", endpoint=modelscope.url, out=out)
    job = manager.start_download(cfg, env=modelscope.env)
    partial = home / "models" / ".again.part" / "model.safetensors.incomplete"
    wait_for(lambda: partial.is_file() and partial.stat().st_size >= 2**20)  # the client writes 1 MiB at a time
    os.kill(job.pid, signal.SIGKILL)  # a power cut, as far as the child can tell
    wait_for(lambda: not job.alive())
    have = partial.stat().st_size
    assert 2**20 <= have < len(modelscope.files["model.safetensors"])
    modelscope.rate, modelscope.requests[:] = 0, []
    job = manager.start_download(cfg, env=modelscope.env)
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    assert status.read(job.folder)["state"] == "finished", status.read(job.folder)
    assert fetched(modelscope, "model.safetensors") == [f"bytes={have}-"]  # only the rest was asked for
    assert (home / "models" / "again" / "model.safetensors").read_bytes() == modelscope.files["model.safetensors"]


@pytest.mark.parametrize("repo, token, says", [
    ("me/missing", None, "repo: me/missing was not found on ModelScope (http"),
    ("me/gated", None, "repo: me/gated is private or needs a login on ModelScope (http"),
    ("me/gated", "not-allowed", "repo: me/gated is private or needs a login on ModelScope (http"),
])
def test_modelscope_missing_and_gated_repos_end_the_job_with_one_line(home, modelscope, repo, token, says):
    modelscope.requests[:], modelscope.tokens[:] = [], []
    env = {**modelscope.env, **({"MODELSCOPE_API_TOKEN": token} if token else {})}
    job = jobs.JobManager().start_download(DownloadConfig(repo=repo, source="modelscope", endpoint=modelscope.url),
                                           env=env)
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    now = status.read(job.folder)
    assert now["state"] == "failed" and now["error"].startswith(says) and "\n" not in now["error"], now["error"]
    assert ("MODELSCOPE_API_TOKEN" in now["error"]) == (repo == "me/gated")
    assert ("GET", f"/api/v1/models/{repo}/repo/files?Revision=master&Recursive=True", None) in modelscope.requests
    assert modelscope.tokens[0][1] == token  # the token was sent (a 403 answer), or none was (a 401)
    assert not (home / "models" / repo.split("/")[1]).exists()


def test_a_private_modelscope_repo_comes_with_the_token_in_MODELSCOPE_API_TOKEN(home, modelscope):
    modelscope.rate, modelscope.requests[:], modelscope.tokens[:] = 0, [], []
    modelscope.allowed = {"my-token"}
    try:
        job = jobs.JobManager().start_download(DownloadConfig(repo="me/gated", source="modelscope",
                                                              endpoint=modelscope.url),
                                               env={**modelscope.env, "MODELSCOPE_API_TOKEN": "my-token"})
        wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    finally:
        modelscope.allowed = set()
    assert status.read(job.folder)["state"] == "finished", status.read(job.folder)
    for name, data in modelscope.files.items():
        assert (home / "models" / "gated" / name).read_bytes() == data
    asked = [t for p, t in modelscope.tokens if p.startswith("/api/v1/models/me/gated/")]
    assert fetched(modelscope, "model.safetensors", "me/gated") and set(asked) == {"my-token"}, modelscope.tokens


def test_modelscope_listing_keeps_files_and_an_unreachable_site_is_one_line(modelscope):
    files, _ = hub.listing(DownloadConfig(repo="me/tiny", source="modelscope", endpoint=modelscope.url))
    assert files == {**{n: len(b) for n, b in modelscope.files.items()}, "onnx/model.onnx": 1000}  # no "onnx"
    with pytest.raises(UserError, match=r"^source: ModelScope \(http://127.0.0.1:9\) cannot be reached") as e:
        hub.listing(DownloadConfig(repo="me/tiny", source="modelscope", endpoint="http://127.0.0.1:9"))
    assert "\n" not in str(e.value)


# ---- a dataset from ModelScope ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ms_data(modelscope):
    """Belle-style data on the fake ModelScope: 40 000 rows of 1 KB as JSON lines, 500 as a JSON array, a test file."""
    import json

    long = "好" * 330
    lines = (json.dumps({"instruction": f"问题 {i}", "input": "", "output": f"回答 {i} {long}"}, ensure_ascii=False)
             for i in range(40_000))
    array = [{"instruction": f"数组 {i}", "input": "", "output": f"回答 {i}"} for i in range(500)]
    modelscope.datasets["me/belle"] = {
        "train_0.5M_CN.json": "\n".join(lines).encode(),
        "extra/train_array.json": json.dumps(array, ensure_ascii=False, indent=1).encode(),
        "test.jsonl": json.dumps({"instruction": "测试 0", "input": "", "output": "x"}).encode(),
        "README.md": b"# belle\n"}
    modelscope.datasets["me/gated"] = modelscope.datasets["me/belle"]
    yield modelscope
    modelscope.datasets.clear()


def test_a_modelscope_dataset_is_streamed_and_sampled_into_a_data_file(home, ms_data):
    import json

    ms_data.requests[:], ms_data.sent[:] = [], []
    job = jobs.JobManager().start_download(DownloadConfig(repo="me/belle", kind="dataset", source="modelscope",
                                                          endpoint=ms_data.url, rows=300, seed=7), env=ms_data.env)
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    done = status.read(job.folder)
    assert done["state"] == "finished", done
    out = home / "data" / "belle-300.jsonl"
    assert done["report"]["path"] == str(out) and done["report"]["rows"] == 300 and "300 rows" in done["message"]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    served = {json.dumps(r, ensure_ascii=False) for f in ("train_0.5M_CN.json",) for r in
              map(json.loads, ms_data.datasets["me/belle"][f].decode().splitlines())}
    served |= {json.dumps(r, ensure_ascii=False) for r in json.loads(ms_data.datasets["me/belle"]["extra/train_array.json"])}
    kept = [json.dumps(r, ensure_ascii=False) for r in rows]
    assert len(set(kept)) == 300 and set(kept) <= served  # rows of the train files only, none twice
    numbers = [int(r["instruction"].split()[1]) for r in rows]
    assert numbers != sorted(numbers)  # picked at random, not the first 300
    # Through ModelScope's dataset API: the listing, then the data files by path (not the test split, not README).
    assert any(p.startswith("/api/v1/datasets/me/belle/repo/tree?") for _, p, _ in ms_data.requests)
    asked = [p for m, p, _ in ms_data.requests if p.startswith("/api/v1/datasets/me/belle/repo?")]
    assert any(p.endswith("FilePath=train_0.5M_CN.json") for p in asked), asked
    assert not any("test.jsonl" in p or "README" in p for p in asked), asked
    # Streamed: the big file was read well short of its end.
    size = len(ms_data.datasets["me/belle"]["train_0.5M_CN.json"])
    assert ms_data.sent and 0 < max(ms_data.sent) < size / 2, (ms_data.sent, size)
    from core import data

    assert data.detect(out) == "alpaca"


def test_a_modelscope_dataset_sample_is_seeded(home, ms_data):
    def sample(seed, name):
        cfg = DownloadConfig(repo="me/belle", kind="dataset", source="modelscope", endpoint=ms_data.url, rows=50,
                             seed=seed, out=str(home / name))
        return Path(hub.sample_dataset(cfg)["path"]).read_text(encoding="utf-8")

    first = sample(3, "a.jsonl")
    assert len(first.splitlines()) == 50
    assert sample(3, "b.jsonl") == first and sample(4, "c.jsonl") != first


@pytest.mark.parametrize("repo, says", [
    ("me/nothing", "repo: me/nothing was not found on ModelScope (http"),
    ("me/gated", "repo: me/gated is private or needs a login on ModelScope (http"),
])
def test_modelscope_missing_and_gated_datasets_end_the_job_with_one_line(home, ms_data, repo, says):
    ms_data.requests[:] = []
    job = jobs.JobManager().start_download(DownloadConfig(repo=repo, kind="dataset", source="modelscope",
                                                          endpoint=ms_data.url, rows=5), env=ms_data.env)
    wait_for(lambda: status.read(job.folder)["state"] in status.FINAL)
    now = status.read(job.folder)
    assert now["state"] == "failed" and now["error"].startswith(says) and "\n" not in now["error"], now["error"]
    assert any(p.startswith(f"/api/v1/datasets/{repo}/repo/tree?") for _, p, _ in ms_data.requests)
    assert not list(home.glob("data/*.jsonl")) and not list(home.glob("data/*.part"))  # no data, nothing half-written


def test_a_modelscope_csv_dataset_keeps_its_columns(home, ms_data):
    import json

    lines = ["instruction,input,output"] + [f'"问 {i}, 第{i}",,"答 {i}\n第二行"' for i in range(30)]
    ms_data.datasets["me/table"] = {"data/train.csv": "\n".join(lines).encode("utf-8-sig")}
    cfg = DownloadConfig(repo="me/table", kind="dataset", source="modelscope", endpoint=ms_data.url, rows=100)
    result = hub.sample_dataset(cfg)
    rows = [json.loads(line) for line in Path(result["path"]).read_text(encoding="utf-8").splitlines()]
    assert result["rows"] == 30  # all of a dataset smaller than the sample
    assert sorted(r["instruction"] for r in rows) == sorted(f"问 {i}, 第{i}" for i in range(30))
    assert all(r["output"].endswith("\n第二行") and r["input"] == "" for r in rows)


def test_a_repo_missing_from_modelscope_cn_points_to_the_international_site(monkeypatch):
    """With no address, ModelScope's client asks modelscope.cn; a repo only on modelscope.ai gets the way there."""
    from modelscope.hub import api
    from modelscope.hub.errors import NotExistError

    asked = []

    class Site:
        def __init__(self, endpoint=None, **kw):
            asked.append(endpoint)

        def get_model_files(self, repo, **kw):
            raise NotExistError(f"{repo} not found")

    monkeypatch.setattr(api, "HubApi", Site)
    with pytest.raises(UserError) as missing:
        hub.listing(DownloadConfig(repo="me/intl-only", source="modelscope"))
    assert str(missing.value) == "repo: me/intl-only was not found on ModelScope; check the spelling (owner/name)"
    assert "https://www.modelscope.ai" in missing.value.hint and "https://www.modelscope.ai" in missing.value.hint_zh
    with pytest.raises(UserError) as elsewhere:  # an address given: that site was asked, nothing to suggest
        hub.listing(DownloadConfig(repo="me/intl-only", source="modelscope", endpoint="https://www.modelscope.ai"))
    assert elsewhere.value.hint is None and asked == [None, "https://www.modelscope.ai"]
