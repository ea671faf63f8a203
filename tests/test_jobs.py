"""The job supervisor with real child processes (a fake trainer that follows the run protocol)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from core import jobs, runs, status
from core.config import TrainConfig
from core.errors import UserError

FAKE = [sys.executable, str(Path(__file__).with_name("fake_child.py"))]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path))
    (tmp_path / "datasets" / "d").mkdir(parents=True)
    (tmp_path / "datasets" / "d" / "manifest.json").write_text("{}")  # enough for the check before a start
    (tmp_path / "datasets" / "d" / "train.jsonl").write_text("")
    return tmp_path


def manager():
    return jobs.JobManager(command=FAKE)


def cfg(home, **kw):
    return TrainConfig(data=str(home / "datasets" / "d"), **kw)


def wait_for(predicate, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_run_finishes_in_a_named_folder_with_metrics(home, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "ok")
    job = manager().start_train(cfg(home), env={"WANDB_API_KEY": "s3cret"})
    run = Path(job.folder)
    assert run.parent == home / "runs" and run.name.endswith("_smollm2")
    wait_for(lambda: job.state() == "finished")
    assert [m["step"] for m in runs.read_metrics(run)] == [1, 2, 3, 4, 5]
    # the secret reached the child but was never written to the run's config
    assert "secret is set" in job.log_tail()
    assert "s3cret" not in (run / "config.json").read_text()


def test_second_start_is_refused_naming_the_run(home, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "1")
    m = manager()
    job = m.start_train(cfg(home))
    with pytest.raises(UserError, match=f"a training run is already going: {Path(job.folder).name}; stop it first"):
        m.start_train(cfg(home))
    m.stop(job, grace=10)
    wait_for(lambda: not job.alive())


def test_a_download_runs_beside_training_and_each_lane_takes_one_job(home, monkeypatch):
    """A model downloads while another trains; a second job of either lane is refused, and a restarted panel
    finds both. The Train tab's Stop ends the training run only."""
    from core.config import DownloadConfig

    monkeypatch.setenv("FAKE_STEP_S", "1")
    monkeypatch.setenv("FAKE_STEPS", "60")  # both still going whatever the load (both are stopped below)
    m = manager()
    train = m.start_train(cfg(home))
    download = m.start_download(DownloadConfig(repo="me/tiny"))
    assert train.alive() and download.alive() and download.kind == "download"
    with pytest.raises(UserError, match="a download is already going: .tiny.job"):
        m.start_download(DownloadConfig(repo="me/other"))
    with pytest.raises(UserError, match=f"a training run is already going: {Path(train.folder).name}"):
        m.start_train(cfg(home))
    # the child's stop handler is set before it says it runs: a stop sent before could be lost (a shell's
    # background job starts with SIGINT ignored)
    wait_for(lambda: status.read(train.folder).get("state") == "running", timeout=30)
    again = manager()  # the panel restarted: it knows only the workspace's job records
    assert again.current().pid == train.pid and again.current(jobs.DOWNLOAD).pid == download.pid
    assert again.last().pid == download.pid  # the newest of both, for the notification
    assert again.stop().pid == train.pid
    wait_for(lambda: not train.alive(), timeout=30)
    assert download.alive() and status.read(train.folder)["state"] == "stopped"
    assert again.current() is None and again.current(jobs.DOWNLOAD).pid == download.pid
    m.stop(download, grace=10)
    wait_for(lambda: not download.alive(), timeout=30)


def test_stop_waits_for_the_step_and_keeps_the_adapter(home, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "50")
    m = manager()
    job = m.start_train(cfg(home))
    wait_for(lambda: status.read(job.folder)["step"] >= 1)
    m.stop(job, grace=10)
    wait_for(lambda: not job.alive())
    final = status.read(job.folder)
    assert final["state"] == "stopped" and final["step"] < 50
    assert (Path(job.folder) / "adapter" / "adapter_config.json").is_file()


def test_a_child_deaf_to_sigint_gets_sigterm(home, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "deaf")
    monkeypatch.setenv("FAKE_STEPS", "50")
    m = manager()
    job = m.start_train(cfg(home))
    wait_for(lambda: status.read(job.folder)["step"] >= 1)
    m.stop(job, grace=1.0)
    time.sleep(0.6)
    assert job.alive(), "SIGINT ignored: the child must be given its grace period"
    wait_for(lambda: not job.alive())
    assert status.read(job.folder)["state"] == "stopped"


def test_crash_without_final_state_becomes_failed_with_a_cause(home, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    job = manager().start_train(cfg(home))
    final = wait_for(lambda: (s := status.read(job.folder))["state"] == "failed" and s)
    assert final["error"] == "killed by signal 9 (SIGKILL)" and "Resume" in final["hint"]


def test_user_error_in_child_is_the_failure_cause(home, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "error")
    job = manager().start_train(cfg(home))  # the fake child fails as a real one does on a bad model
    final = wait_for(lambda: (s := status.read(job.folder))["state"] == "failed" and s)
    assert final["error"] == "model: folder /nope not found"


def test_restarted_manager_reattaches_and_resume_continues(home, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "8")
    first = manager()
    job = first.start_train(cfg(home))
    again = manager()  # the panel restarted: a fresh manager knows only workspace/job.json
    found = again.current()
    assert found is not None and found.pid == job.pid and found.folder == job.folder
    with pytest.raises(UserError, match="already going"):
        again.start_train(cfg(home))
    wait_for(lambda: status.read(job.folder)["step"] >= 2)
    again.stop(found, grace=10)
    wait_for(lambda: not job.alive())
    assert again.current() is None
    first = status.read(job.folder)
    assert first["state"] == "stopped"
    resumed = again.resume(job.folder)
    assert resumed.folder == job.folder
    wait_for(lambda: resumed.state() == "finished")
    steps = [m["step"] for m in runs.read_metrics(job.folder)]
    assert steps == list(range(1, 9))
    # The run's clock goes on from the time it trained before the stop (it started again from 0).
    after = status.read(job.folder)
    assert after["elapsed_before"] == pytest.approx(first["ended"] - first["started"])
    assert status.elapsed(after) == pytest.approx(after["elapsed_before"] + after["ended"] - after["started"])
    assert json.loads((Path(job.folder) / "config.json").read_text())["resume"] is True


def test_a_late_supervisor_of_the_old_job_leaves_the_resumed_run_alone(home):
    # The panel's supervisor notices the stopped child up to a second late; by then Resume may have
    # started the next child in the same folder, whose status must not be overwritten as ended.
    m = manager()
    old = jobs.Job("train", 999_999, str(home / "runs" / "r"), time.time() - 60, [], str(home / "none.log"))
    Path(old.folder).mkdir(parents=True)
    status.write_json(Path(old.folder) / status.FILE, {**status.FIELDS, "state": "training", "pid": os.getpid(),
                                                       "started": time.time()})
    m._final_word(old, code=None)
    assert status.read_json(Path(old.folder) / status.FILE)["state"] == "training"
    # Its own status, still unfinished, does get the final word; so does one whose writer (rank 0
    # under a launcher, say) is gone too.
    for writer in (old.pid, 999_998):
        status.write_json(Path(old.folder) / status.FILE, {**status.FIELDS, "state": "training", "pid": writer,
                                                           "started": old.started})
        m._final_word(old, code=1)
        assert status.read_json(Path(old.folder) / status.FILE)["state"] == "failed"


def test_status_writes_from_many_threads_at_once_all_land(tmp_path):
    path = tmp_path / "status.json"
    errors = []

    def write(i):
        try:
            for k in range(50):
                status.write_json(path, {"writer": i, "k": k})
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert status.read_json(path)["k"] == 49
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_dataset_is_refused_before_anything_starts(home):
    with pytest.raises(UserError, match="data: .* is not a prepared dataset"):
        manager().start_train(TrainConfig(data=str(home / "nothing")))
    assert not (home / "runs").exists()


def test_chat_model_is_released_before_training_starts(home, monkeypatch):
    from core import gpus

    released = []
    monkeypatch.setattr(jobs, "before_train", [released.append])
    m = manager()
    job = m.start_train(cfg(home))
    assert released == [gpus.trains_on("")]  # the GPUs the run takes: the first one, none without a GPU
    wait_for(lambda: not job.alive())


def test_stop_before_the_child_could_say_anything_ends_as_stopped(home, monkeypatch):
    # A child that dies of the stop signal while still starting (no handler installed yet).
    monkeypatch.setenv("FAKE_MODE", "slow_start")
    m = manager()
    job = m.start_train(cfg(home))
    m.stop(job, grace=5)
    final = wait_for(lambda: (s := status.read(job.folder))["state"] in status.FINAL and s)
    assert final["state"] == "stopped" and final["error"] is None
    assert "nothing to keep" in final["hint"]


def test_the_supervisor_survives_a_status_it_cannot_write(home, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_MODE", "crash")
    m = manager()

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    job = m.start_train(cfg(home))
    monkeypatch.setattr(status, "write_json", full_disk)
    wait_for(lambda: not job.alive())
    time.sleep(0.5)
    # The final word could not be written; the reader still tells a vanished run from a live one.
    assert status.read(job.folder)["state"] == "failed"
    assert "supervisor: could not write the final state" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_run_stopped_while_it_starts_ends_stopped(home, base_model):
    from test_train import FAST, identity_dataset

    m = jobs.JobManager()
    job = m.start_train(TrainConfig(data=str(identity_dataset()), out=str(home / "runs" / "early"), max_steps=40,
                                    **FAST))
    time.sleep(1.5)  # still importing or loading the model
    assert status.read(job.folder)["state"] == "starting"
    m.stop(job, grace=60)
    final = wait_for(lambda: (s := status.read(job.folder))["state"] in status.FINAL and s, timeout=180)
    assert final["state"] == "stopped" and final["step"] == 0, final
    assert "nothing to keep" in final["hint"] and not (Path(job.folder) / "adapter").exists()
