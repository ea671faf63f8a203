"""Why a job ended, in words: exceptions, exit codes and signals, and a status that cannot be written."""

from __future__ import annotations

import errno
import logging
import signal

import pytest

from core import status
from core.errors import UserError


def test_exceptions_in_words():
    torch = pytest.importorskip("torch")
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                      "of 23.50 GiB of which 1.25 GiB is free. Including non-PyTorch memory")
    assert status.explain(oom) == ("out of GPU memory (needed 2.00 GiB more, 1.25 GiB free)", status.OOM_HINT)
    assert "unload" in status.explain(oom, "chat")[1] and "merge again" in status.explain(oom, "merge")[1]
    assert status.explain(UserError("data: bad row on line 7")) == ("data: bad row on line 7", None)
    assert status.explain(UserError("x", hint="do y")) == ("x", "do y")
    error, hint = status.explain(OSError(errno.ENOSPC, "No space left on device", "/w/runs/a/adapter"))
    assert error.startswith("disk full") and "Resume" in hint
    assert status.explain(ValueError("something odd\nmore detail")) == ("ValueError: something odd", "see train.log")


def test_a_killed_job_is_said_to_be_out_of_memory_only_when_the_kernel_said_so(tmp_path):
    error, hint = status.ended(-signal.SIGKILL, tmp_path / "none.log")
    assert error == "killed by signal 9 (SIGKILL)" and "memory" not in error and "Resume" in hint
    error, hint = status.ended(-signal.SIGKILL, tmp_path / "none.log", out_of_memory=True)
    assert "ran out of memory" in error and "batch size" in hint
    (tmp_path / "train.log").write_text("loading\nerror: model: folder /nope not found\n")
    assert status.ended(2, tmp_path / "train.log") == ("model: folder /nope not found", status.FIX_HINT)
    assert status.ended(130, tmp_path / "train.log", stopping=True)[0] is None


def test_the_last_word_survives_a_full_disk(tmp_path, monkeypatch, caplog):
    writer = status.Status(tmp_path, step=3)
    calls = []

    def full(path, data):
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(status, "write_json", full)
    writer.last_word(logging.getLogger("t"), state="failed", error="x")  # never raises
    assert len(calls) == 2 and "could not write status.json" in caplog.text
    monkeypatch.undo()
    assert status.read(tmp_path)["step"] == 3  # the last whole file is still there


def test_an_unforeseen_failure_at_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    import core.__main__ as cli
    from core import monitor

    def broken(argv):
        raise RuntimeError("CUDA out of memory. Tried to allocate 26.00 GiB. GPU 0 has a total capacity of 23.5 GiB "
                           "of which 23.1 GiB is free.")

    monkeypatch.setattr(monitor, "cli", broken)
    assert cli.main(["monitor"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: monitor: out of GPU memory (needed 26.00 GiB more, 23.1 GiB free)")
