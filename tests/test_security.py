"""Every request that names a path, tried as an attacker would: `..`, absolute paths, symlinks, /proc.

The rule: names become folders only inside the workspace; reads come only from the workspace,
the model cache, the project's assets and the folders the operator allowed with --allow-dir.
Each refusal is one line, and nothing is read or written outside.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_app import SAMPLE, App

pytestmark = pytest.mark.slow

OUTSIDE_READS = ["/etc/passwd", "../../../../etc/passwd", "/proc/self/environ", "~/.bashrc"]
BAD_NAMES = ["../../../../tmp/{tag}", "/tmp/{tag}", "..", "a/../../{tag}", ".hidden", "x/y"]


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A folder outside the workspace holding things worth stealing: a data file, a run, a model, a secret."""
    root = tmp_path_factory.mktemp("outside")
    (root / "secret.jsonl").write_text('{"instruction": "TOPSECRET", "output": "TOPSECRET"}\n', encoding="utf-8")
    run = root / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "status.json").write_text('{"state": "failed", "error": "TOPSECRET"}')
    (run / "train.log").write_text("TOPSECRET\n")
    return root


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("allowed")
    (folder / "mine.jsonl").write_text(SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory, base_model, allowed, outside):
    a = App(tmp_path_factory.mktemp("secure"), base_model, "--allow-dir", str(allowed), "--max-upload-mb", "1").start()
    # Symlinks planted inside the workspace that lead out of it.
    for folder in ("data", "datasets", "runs", "merged"):
        (a.home / folder).mkdir(parents=True, exist_ok=True)
    (a.home / "data" / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (a.home / "runs" / "linked").symlink_to(outside / "run")
    (a.home / "datasets" / "escape").symlink_to(outside)
    (a.home / "merged" / "escape").symlink_to(outside)
    yield a
    a.kill()


def preview(client, source, model="default", name=""):
    return client.predict(source, 5, 1, "seed", 0.0, 512, model, False, name, api_name="/preview")


def prepare(client, source, name="", model="default"):
    return client.predict(source, 5, 1, "seed", 0.0, 512, model, False, name, api_name="/prepare")


def start(client, name="", model="default", data=""):
    from test_app import settings

    return client.predict(model, data, "default", name, "", *settings(), api_name="/start")


def test_preview_and_prepare_read_only_allowed_files(app, outside, allowed):
    c = app.client()
    for source in [*OUTSIDE_READS, str(outside / "secret.jsonl"), str(app.home / "data" / "link.jsonl")]:
        message, table = preview(c, source)
        assert "outside the workspace" in message, (source, message)
        assert "root:" not in message and "TOPSECRET" not in str(table) and not table["data"]
        stats, _, folder = prepare(c, source)
        assert "outside the workspace" in stats and not isinstance(folder, str)
    # The operator's allowed folder and the bundled sample are fine.
    message, table = preview(c, str(allowed / "mine.jsonl"))
    assert "alpaca" in message.lower() and table["data"]
    assert preview(c, str(SAMPLE))[1]["data"]


def test_names_never_become_folders_outside_the_workspace(app, outside):
    c = app.client()
    for pattern in BAD_NAMES + ["escape"]:  # "escape" is a planted symlink in datasets/
        name = pattern.format(tag="escape_ds")
        stats, _, folder = prepare(c, str(SAMPLE), name=name)
        assert ("not a usable name" in stats or "points outside" in stats) and not isinstance(folder, str), (name, stats)
    for pattern in BAD_NAMES + ["linked"]:  # "linked" is a planted symlink in runs/
        name = pattern.format(tag="escape_run")
        message, _ = start(c, name=name, data=str(app.home / "datasets"))
        assert "run name:" in message, (name, message)
    # Every name above that leads out aims at /tmp (or climbs from the workspace): nothing arrived there.
    assert not [p.name for p in Path("/tmp").iterdir() if p.name.startswith("escape_")]
    assert sorted(p.name for p in outside.iterdir()) == ["run", "secret.jsonl"]
    assert not (app.home / "runs" / "escape_run").exists()


def test_training_reads_only_allowed_models_and_datasets(app, outside):
    c = app.client()
    for model in ["/etc", str(outside), "../../../../etc", "~"]:
        message, _ = start(c, name="m", model=model, data=str(app.home / "datasets"))
        assert "Model:" in message and "outside the workspace" in message, (model, message)
    message, _ = start(c, name="d", data=str(outside))
    assert "dataset:" in message and "outside the workspace" in message
    assert not list((app.home / "runs").glob("m*")) and not (app.home / "runs" / "d").exists()


def test_run_folders_outside_runs_are_never_shown_resumed_or_merged(app, outside):
    c = app.client()
    for run in [str(outside / "run"), str(app.home / "runs" / "linked"), "/etc", "/proc/self"]:
        html, _, log = c.predict(run, api_name="/poll")
        assert "TOPSECRET" not in html + log, run
        message, _ = c.predict(run, "", api_name="/resume")
        assert "run:" in message and ("outside" in message or "not inside" in message), (run, message)
        base, out = c.predict(run, api_name="/pick_run")
        assert base["value"] == "" and out["value"] == ""
        result, _ = c.predict(run, "", "x", "float32", api_name="/merge")
        assert "run:" in result, (run, result)


def test_merge_output_is_a_name_inside_merged(app, outside):
    c = app.client()
    run = app.home / "runs" / "real"
    (run / "adapter").mkdir(parents=True)
    for out in ["../escape_merged", "/tmp/escape_merged", "escape"]:
        result, _ = c.predict(str(run), "", out, "float32", api_name="/merge")
        assert "output name:" in result, (out, result)
    assert not (app.home / "escape_merged").exists() and not Path("/tmp/escape_merged").exists()
    assert not (Path(__file__).resolve().parent.parent.parent / "escape_merged").exists()
    result, _ = c.predict(str(run), "/etc", "fine", "float32", api_name="/merge")
    assert "Base model:" in result and "outside the workspace" in result


def test_chat_loads_only_allowed_models(app, outside):
    c = app.client()
    for source in ["/etc", str(outside), "adapter:" + str(outside / "run" / "adapter"), "adapter:/proc/self"]:
        _, hist, _, note = c.predict("hi", [], [], source, "", "", "auto", 0.0, 1.0, 0, 1.1, 4, api_name="/chat")
        assert "Model:" in note and ("outside" in note or "not inside" in note), (source, note)


def test_uploads_are_bounded(app, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "big.jsonl"
    big.write_text('{"instruction": "q", "output": "' + "a" * 2_000_000 + '"}\n', encoding="utf-8")
    with pytest.raises(Exception, match="(?i)size|large|limit"):
        app.client().predict(handle_file(str(big)), api_name="/upload")
    assert not (app.home / "data" / "big.jsonl").exists()
    small = tmp_path / "small.jsonl"
    small.write_text(SAMPLE.read_text(encoding="utf-8")[:50_000].rsplit("\n", 1)[0] + "\n", encoding="utf-8")
    assert app.client().predict(handle_file(str(small)), api_name="/upload")["value"].endswith("small.jsonl")


@pytest.mark.parametrize("argv, refused", [
    (["--host", "0.0.0.0"], True),
    (["--host", "192.168.1.5"], True),
    (["--host", "0.0.0.0", "--auth", "me:secret"], False),
    (["--host", "0.0.0.0", "--insecure-no-auth"], False),
    (["--host", "127.0.0.2"], False),
    (["--host", "localhost"], False),
    (["--host", "::1"], False),
    (["--share"], True),
])
def test_a_reachable_panel_needs_a_password(argv, refused, capsys):
    import app as panel

    if refused:
        with pytest.raises(SystemExit) as e:
            panel.parse(argv)
        assert e.value.code == 2 and "--auth USER:PASSWORD" in capsys.readouterr().err
    else:
        assert panel.parse(argv).host == argv[1]


def test_paths_refuse_symlinks_out_of_the_workspace(tmp_path, monkeypatch):
    from core import paths
    from core.errors import UserError

    monkeypatch.setenv("QLORA_STUDIO_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv(paths.ALLOW_ENV, raising=False)
    (tmp_path / "ws" / "runs").mkdir(parents=True)
    (tmp_path / "ws" / "runs" / "out").symlink_to(tmp_path)
    with pytest.raises(UserError, match="points outside"):
        paths.child(paths.runs(), "out", "run name")
    with pytest.raises(UserError, match="outside the workspace"):
        paths.readable(tmp_path / "ws" / "runs" / "out" / "x", "data file")
    assert paths.child(paths.runs(), "训练 1", "run name") == tmp_path / "ws" / "runs" / "训练 1"
    assert paths.model_spec("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    with pytest.raises(UserError):
        paths.model_spec("/etc")
    monkeypatch.setenv(paths.ALLOW_ENV, os.pathsep.join(["/etc"]))
    assert paths.model_spec("/etc") == "/etc"
