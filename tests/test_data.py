"""Data preparation as a user meets it: files in every layout, sampling, statistics, bad input."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import data, readers
from core.__main__ import main
from core.config import PrepareConfig
from core.errors import UserError

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample_zh.jsonl"


@pytest.fixture(autouse=True)
def _model(tokenizer):
    """Every test here counts tokens with the embedded model's tokenizer."""


def prep(tmp_path, src, name="out", **kw) -> dict:
    """Prepared with the tutorial's seed template and every row in training, unless a test says otherwise."""
    kw.setdefault("sample", 0)
    kw.setdefault("eval_ratio", 0)
    kw.setdefault("template", "seed")
    return data.prepare(PrepareConfig(input=str(src), out=str(tmp_path / name), **kw))


def lines(folder, split="train") -> list[dict]:
    return [json.loads(x) for x in (Path(folder) / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["prepare", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- layouts ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, layout, rows", [
    ("alpaca.jsonl", "alpaca", 10),
    ("alpaca_array.json", "alpaca", 6),
    ("alpaca.csv", "alpaca", 4),
    ("sharegpt.jsonl", "sharegpt", 2),
    ("messages.jsonl", "messages", 2),
    ("text.jsonl", "text", 2),
])
def test_each_layout_is_detected_and_prepared(tmp_path, name, layout, rows):
    assert data.detect(DATA / name) == layout
    m = prep(tmp_path, DATA / name)
    out = lines(m["path"])
    assert m["layout"] == layout and m["counts"]["kept"] == rows == len(out)
    for row in out:
        assert row["text"] == "".join(t for t, _ in row["segments"])
        assert any(trained for _, trained in row["segments"])


def test_csv_keeps_commas_quotes_and_newlines_inside_cells(tmp_path):
    texts = {r["text"] for r in lines(prep(tmp_path, DATA / "alpaca.csv")["path"])}
    joined = "\n".join(texts)
    assert "Translate, please.\n你好，世界" in joined and "Hello, world" in joined
    assert "床前明月光，\n疑是地上霜。" in joined and 'What is "LoRA"?' in joined


def test_json_array_is_read_across_chunk_boundaries(monkeypatch):
    whole = [r for _, r in readers.records(DATA / "alpaca_array.json")]
    monkeypatch.setattr(readers, "CHUNK", 7)  # cuts objects and Chinese characters in two
    assert [r for _, r in readers.records(DATA / "alpaca_array.json")] == whole
    assert len(whole) == 6 and whole[0]["input"] == "我喜欢喝茶。"


def test_forced_format_overrides_detection(tmp_path):
    assert data.detect(DATA / "both.jsonl") == "alpaca"
    auto = lines(prep(tmp_path, DATA / "both.jsonl", "auto")["path"])
    forced = prep(tmp_path, DATA / "both.jsonl", "forced", format="text")
    assert forced["layout"] == "text"
    assert all("answer" in r["text"] for r in auto)
    assert all(r["text"].startswith("plain text") and r["segments"] == [[r["text"], True]]
               for r in lines(forced["path"]))


def test_forcing_a_layout_the_file_does_not_have_names_the_row(tmp_path, capsys):
    rc, _, err = cli(capsys, DATA / "alpaca.jsonl", "--out", tmp_path / "o", "--format", "sharegpt")
    assert rc == 2 and "alpaca.jsonl line 1" in err and "conversations" in err


# ---- templates --------------------------------------------------------------------------
def test_seed_template_keeps_input_and_ends_replies_with_eos(tmp_path, tokenizer):
    rows = lines(prep(tmp_path, DATA / "alpaca.jsonl")["path"])
    tea = next(r for r in rows if "我喜欢喝茶" in r["text"])
    assert tea["segments"] == [
        ["### Human: 把下面的句子翻译成英文。\n我喜欢喝茶。 ### Assistant: ", False],
        ["I like drinking tea." + tokenizer.eos_token, True],
    ]


def test_chat_template_uses_the_models_own_markers(tmp_path):
    m = prep(tmp_path, DATA / "messages.jsonl", template="chat")
    assert m["template"] == {"name": "chat", "pattern": ""}
    rows = lines(m["path"])
    tokyo = next(r for r in rows if "Tokyo" in r["text"])
    assert "<|im_start|>system\nAnswer in one word.<|im_end|>" in tokyo["text"]
    assert [s for s in tokyo["segments"] if s[1]] == [["Tokyo.<|im_end|>\n", True]]


def test_custom_template(tmp_path, tokenizer):
    m = prep(tmp_path, DATA / "alpaca.jsonl", template="问：{instruction}\n{input}\n答：{output}")
    assert m["template"]["name"] == "custom"
    tea = next(r for r in lines(m["path"]) if "我喜欢喝茶" in r["text"])
    assert tea["text"] == "问：把下面的句子翻译成英文。\n我喜欢喝茶。\n答：I like drinking tea." + tokenizer.eos_token


def test_multi_turn_is_rendered_turn_by_turn_with_only_replies_trained(tmp_path, tokenizer):
    m = prep(tmp_path, DATA / "sharegpt.jsonl")
    assert m["counts"]["dropped"] == {"no assistant reply": 1}
    convo = next(r for r in lines(m["path"]) if "乘以 4" in r["text"])
    eos = tokenizer.eos_token
    assert convo["segments"] == [
        ["你是一个乐于助人的助手。\n", False],
        ["### Human: 你好！ ### Assistant: ", False], ["你好，有什么可以帮你？" + eos, True],
        ["### Human: 2 加 3 等于几？ ### Assistant: ", False], ["等于 5。" + eos, True],
        ["### Human: 再乘以 4 呢？ ### Assistant: ", False], ["等于 20。" + eos, True],
    ]


def test_alpaca_history_becomes_earlier_turns(tmp_path, tokenizer):
    m = prep(tmp_path, DATA / "alpaca_history.jsonl", skip_bad=True)
    assert m["counts"]["dropped"] == {"bad history": 1}
    convo = next(r for r in lines(m["path"]) if "乘以 4" in r["text"])
    eos = tokenizer.eos_token
    assert [t for t, trained in convo["segments"] if trained] == ["你好，有什么可以帮你？" + eos, "等于 5。" + eos,
                                                                  "等于 20。" + eos]


def test_multi_turn_chat_template_trains_each_reply(tmp_path):
    rows = lines(prep(tmp_path, DATA / "messages.jsonl", template="chat")["path"])
    colors = next(r for r in rows if "草呢" in r["text"])
    assert [t for t, trained in colors["segments"] if trained] == ["蓝色。<|im_end|>\n", "绿色。<|im_end|>\n"]
    assert "草呢" in "".join(t for t, trained in colors["segments"] if not trained)


# ---- sampling and splits ----------------------------------------------------------------
def test_same_seed_same_rows_other_seed_other_rows(tmp_path):
    def pick(name, seed):
        return sorted(r["text"] for r in lines(prep(tmp_path, SAMPLE, name, sample=20, seed=seed)["path"]))

    a, b, c = pick("a", 1), pick("b", 1), pick("c", 2)
    assert len(a) == 20 and a == b and a != c


def test_asking_for_more_rows_than_the_file_has_takes_them_all(tmp_path, capsys):
    rc, out, _ = cli(capsys, DATA / "alpaca.jsonl", "--out", tmp_path / "o", "--sample", 1000, "--eval-ratio", 0)
    assert rc == 0 and len(lines(tmp_path / "o")) == 10
    assert "only 10 are usable" in out


@pytest.mark.parametrize("sample, ratio, train, evals", [(100, 0.1, 90, 10), (20, 0.25, 15, 5), (10, 0.01, 9, 1),
                                                         (0, 0.2, 96, 24)])
def test_eval_split_sizes(tmp_path, sample, ratio, train, evals):
    m = prep(tmp_path, SAMPLE, sample=sample, eval_ratio=ratio)
    tr, ev = lines(m["path"]), lines(m["path"], "eval")
    assert (len(tr), len(ev)) == (train, evals) == (m["counts"]["train"], m["counts"]["eval"])
    assert not {r["text"] for r in tr} & {r["text"] for r in ev}


def test_by_default_a_small_eval_split_is_kept_when_there_are_enough_rows(tmp_path):
    many = data.prepare(PrepareConfig(input=str(SAMPLE), out=str(tmp_path / "many"), sample=40))
    few = data.prepare(PrepareConfig(input=str(SAMPLE), out=str(tmp_path / "few"), sample=9))
    assert (many["counts"]["train"], many["counts"]["eval"]) == (36, 4)
    assert (few["counts"]["train"], few["counts"]["eval"]) == (9, 0) and few["files"]["eval"] is None


def test_no_eval_file_without_an_eval_share(tmp_path):
    m = prep(tmp_path, DATA / "alpaca.jsonl", eval_ratio=0)
    assert not (Path(m["path"]) / "eval.jsonl").exists() and m["files"]["eval"] is None


# ---- statistics and manifest ------------------------------------------------------------
def _tokens(tokenizer, segments) -> list[int]:
    """Tokens per segment, the way the trainer counts them."""
    return [len(tokenizer(t, add_special_tokens=False).input_ids) for t, _ in segments]


def test_statistics_count_the_rows_max_seq_length_cuts(tmp_path, tokenizer):
    m = prep(tmp_path, DATA / "alpaca.jsonl", max_seq_length=24)
    lengths = [sum(_tokens(tokenizer, r["segments"])) for r in lines(m["path"])]
    cut = sum(n > 24 for n in lengths)
    assert 0 < cut < len(lengths)  # the fixture straddles the limit, so the count means something
    s = m["stats"]
    assert s["lengths"] == lengths and s["cut_rows"] == cut and s["cut_share"] == round(cut / len(lengths), 4)
    assert s["tokens"]["max"] == max(lengths) and min(lengths) <= s["tokens"]["p50"] <= s["tokens"]["p95"]
    assert sum(s["histogram"]["counts"]) == len(lengths)


def test_rows_whose_prompt_fills_max_seq_length_are_counted(tmp_path, tokenizer, capsys):
    rc, out, _ = cli(capsys, DATA / "alpaca.jsonl", "--out", tmp_path / "o", "--max-seq-length", 16, "--sample", 0, "--template", "seed",
                     "--eval-ratio", 0)
    rows = lines(tmp_path / "o")
    prompts = [_tokens(tokenizer, r["segments"])[0] for r in rows]
    expected = sum(n >= 16 for n in prompts)
    assert rc == 0 and 0 < expected < len(rows)
    assert f"{expected} of them have a prompt that alone fills max_seq_length" in out


def test_manifest_records_source_template_and_counts(tmp_path):
    m = prep(tmp_path, DATA / "empty_output.jsonl", seed=7, template="chat")
    saved = json.loads((Path(m["path"]) / "manifest.json").read_text(encoding="utf-8"))
    assert saved["source"]["sha256"] == hashlib.sha256((DATA / "empty_output.jsonl").read_bytes()).hexdigest()
    assert saved["seed"] == 7 and saved["template"]["name"] == "chat" and saved["model"] == "default"
    # An empty reply teaches nothing: such rows are dropped and counted, not fatal.
    assert saved["counts"] | {} == {"read": 7, "usable": 5, "dropped": {"empty output": 2}, "dropped_total": 2,
                                    "long_rows_cut": 0, "row_chars": 100_000, "kept": 5, "train": 5, "eval": 0}


def test_list_datasets_offers_prepared_folders(tmp_path):
    prep(tmp_path, DATA / "alpaca.jsonl", "one")
    prep(tmp_path, DATA / "text.jsonl", "two", template="Q {instruction} A {output}")
    (tmp_path / ".half-written.tmp").mkdir()
    found = {d["name"]: d for d in data.list_datasets(tmp_path)}
    assert set(found) == {"one", "two"}
    assert found["one"]["rows"] == 10 and found["one"]["template"] == "seed"
    assert found["two"]["template"] == "Q {instruction} A {output}"


def test_progress_is_reported_up_to_the_whole_file(tmp_path):
    seen = []
    data.prepare(PrepareConfig(input=str(SAMPLE), out=str(tmp_path / "o"), sample=10), progress=seen.append)
    assert len(seen) > 10 and seen == sorted(seen) and seen[-1] == 1.0


def test_without_a_folder_name_the_dataset_lands_in_the_workspace(workspace):
    first = data.prepare(PrepareConfig(input=str(DATA / "alpaca.jsonl"), sample=5))
    again = data.prepare(PrepareConfig(input=str(DATA / "alpaca.jsonl"), sample=5))
    assert Path(first["path"]).parent == workspace / "datasets"
    assert Path(first["path"]).name.startswith("alpaca-5-seed42") and again["path"] != first["path"]
    assert {d["path"] for d in data.list_datasets()} >= {first["path"], again["path"]}
    # Named after the rows it really holds: the file has 10, not the 1000 asked for.
    most = data.prepare(PrepareConfig(input=str(DATA / "alpaca.jsonl"), sample=1000))
    assert Path(most["path"]).name.startswith("alpaca-10-seed42") and most["counts"]["kept"] == 10


def test_an_output_place_that_cannot_be_made_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot create the output folder"):
        data.prepare(PrepareConfig(input=str(DATA / "alpaca.jsonl"), out=str(tmp_path / "file" / "ds")))


def test_preview_reads_only_the_rows_it_shows():
    cfg = PrepareConfig(input=str(DATA / "bad_json.jsonl"), template="seed")  # broken at line 7, well after row 3
    rows = data.preview(cfg, n=3)
    assert len(rows) == 3 and all(r["prompt"] + r["response"] == r["text"] for r in rows)
    assert rows[0]["prompt"].startswith("### Human: 把下面的句子翻译成英文。\n我喜欢喝茶。")
    assert rows[0]["response"].startswith("I like drinking tea.")


# ---- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("bad_json.jsonl", ["bad_json.jsonl line 7", "invalid JSON"]),
    ("no_output.jsonl", ["no_output.jsonl line 12", "`output`"]),
    ("no_output.csv", ["no_output.csv line 5", "`output`"]),
    ("empty.jsonl", ["empty.jsonl", "empty"]),
    ("not_utf8.jsonl", ["not_utf8.jsonl line 3", "UTF-8"]),
    ("utf16.jsonl", ["utf16.jsonl", "saved as UTF-16"]),
    ("unknown.jsonl", ["unknown layout", "answer, question"]),
    ("missing.jsonl", ["missing.jsonl", "not found"]),
])
def test_bad_input_is_refused_with_one_line_naming_the_place(tmp_path, capsys, name, expected):
    out = tmp_path / "out"
    rc, stdout, err = cli(capsys, DATA / name, "--out", out)
    assert rc == 2 and stdout == ""
    assert err.count("\n") == 1, err
    for part in expected:
        assert part in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder


def test_skip_bad_counts_broken_rows_instead_of_stopping(tmp_path, capsys):
    rc, _, err = cli(capsys, DATA / "mixed_bad.jsonl", "--out", tmp_path / "strict")
    assert rc == 2 and "line 4" in err and "--skip-bad" in err
    rc, out, _ = cli(capsys, DATA / "mixed_bad.jsonl", "--out", tmp_path / "lenient", "--skip-bad")
    assert rc == 0
    m = json.loads((tmp_path / "lenient" / "manifest.json").read_text(encoding="utf-8"))
    assert m["counts"]["dropped"] == {"invalid JSON": 2, "no output": 1, "empty output": 1}
    assert m["counts"]["read"] == 11 and m["counts"]["kept"] == 7 == len(lines(tmp_path / "lenient"))
    assert "Dropped 4: invalid JSON 2" in out


def test_an_existing_output_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, _, err = cli(capsys, DATA / "alpaca.jsonl", "--out", out)
    assert rc == 2 and "already exists" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_file_with_nothing_usable_is_refused(tmp_path):
    src = tmp_path / "blank_answers.jsonl"
    src.write_text('{"instruction": "a", "output": ""}\n{"instruction": "b", "output": " "}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"no usable rows among 2 \(empty output: 2\)"):
        prep(tmp_path, src)


def test_command_line_exit_codes_and_summary(tmp_path):
    """The real command: exit 0 with a summary, exit 2 with one line and no traceback."""
    def run(*a):
        return subprocess.run([sys.executable, "-m", "core", "prepare", *map(str, a)],
                              check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)

    bad = run(DATA / "bad_json.jsonl", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    ok = run(SAMPLE, "--out", tmp_path / "ok", "--sample", 64, "--eval-ratio", 0.125)
    assert ok.returncode == 0, ok.stderr
    assert "Read 120 rows" in ok.stdout and "56 train, 8 eval" in ok.stdout and str(tmp_path / "ok") in ok.stdout


def test_a_wrong_flag_is_one_line_and_exit_code_2(tmp_path, capsys):
    rc, _, err = cli(capsys, DATA / "alpaca.jsonl", "--out", tmp_path / "o", "--sample", "10", "--no-such-flag")
    assert rc == 2 and err.strip().count("\n") == 0 and "--no-such-flag" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_not_taken_for_a_folder(tmp_path, capsys):
    rc, _, err = cli(capsys, "/dev/zero", "--out", tmp_path / "o")
    assert rc == 2 and err == "error: /dev/zero: is not a regular file; choose a data file\n"
    rc, _, err = cli(capsys, tmp_path, "--out", tmp_path / "o")
    assert rc == 2 and err == f"error: {tmp_path}: is a folder; choose a data file inside it\n"


# ---- rows far longer than training could use -----------------------------------------------------
@pytest.fixture(scope="module")
def huge_row(tmp_path_factory) -> Path:
    """One alpaca row of about 10 MB: an instruction and a whole book pasted into `input`."""
    src = tmp_path_factory.mktemp("huge") / "one_row.jsonl"
    book = "这是一个很长的句子。 The quick brown fox jumps over the lazy dog. " * 180_000
    src.write_text(json.dumps({"instruction": "Summarize:", "input": book, "output": "A fox."},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    assert src.stat().st_size > 9_000_000
    return src


def test_a_huge_row_is_cut_before_counting_tokens(tmp_path, huge_row):
    """The command finishes in seconds with bounded memory, and says what it cut."""
    out = tmp_path / "ds"
    # VmHWM is this process's own peak: getrusage's ru_maxrss would carry over the forking pytest's.
    code = ("import re, sys; from core.__main__ import main; rc = main(sys.argv[1:]); "
            "print('peak', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, "prepare", huge_row, "--out", out, "--template", "seed"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 rows were longer than 100,000 characters and were cut before counting tokens" in result.stdout
    peak_mb = int(result.stdout.split("peak ")[1].split()[0]) / 1024  # Linux reports KiB
    assert peak_mb < 1000, peak_mb  # tokenizing the whole row took 2 GB
    row = lines(out)[0]
    assert len(row["text"]) < 110_000 and row["text"].startswith("### Human: Summarize:\n这是一个很长的句子。")
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["counts"]["long_rows_cut"] == 1 and m["counts"]["row_chars"] == 100_000
    assert m["stats"]["cut_rows"] == 1 and m["stats"]["tokens"]["max"] < 110_000


def test_preview_sends_the_beginning_of_a_huge_row(huge_row):
    row = data.preview(PrepareConfig(input=str(huge_row), template="seed"), n=1)[0]
    assert all(len(row[k]) <= 2001 for k in ("text", "prompt", "response"))
    assert row["prompt"].startswith("### Human: Summarize:\n这是一个很长的句子。") and row["prompt"].endswith("…")
    assert row["text"].startswith(row["prompt"][:-1])


def test_a_long_row_keeps_its_beginning_and_a_short_one_is_untouched():
    long_turns = {"system": "be brief", "turns": [{"instruction": "q" * 60, "input": "", "output": "a" * 60},
                                                  {"instruction": "second", "input": "", "output": "x"}]}
    cut, was_cut = readers.bound(long_turns, 100)
    assert was_cut and cut["system"] == "be brief" and len(cut["turns"]) == 1
    assert cut["turns"][0] == {"instruction": "q" * 60, "input": "", "output": "a" * 32}
    assert readers.bound({"text": "abc"}, 100) == ({"text": "abc"}, False)
    assert readers.bound({"text": "abcdef"}, 4) == ({"text": "abcd"}, True)


def test_auto_takes_the_models_own_chat_template_and_says_why(tmp_path, tokenizer, monkeypatch):
    m = data.prepare(PrepareConfig(input=str(DATA / "alpaca.jsonl"), out=str(tmp_path / "auto"), sample=0))
    assert m["template"]["name"] == "chat" and m["template_why"] == "auto_chat"
    assert "<|im_start|>" in lines(m["path"])[0]["text"]  # SmolLM2's own turn markers, not ### Human:
    assert "Template: chat (auto: the model has a chat template of its own" in data.summary(m)
    rows = data.preview(PrepareConfig(input=str(DATA / "alpaca.jsonl")), n=1)
    assert rows[0]["template"] == "chat" and rows[0]["template_why"] == "auto_chat"
    # A base model without a chat template gets the tutorial's.
    from core.template import Template

    monkeypatch.setattr(tokenizer, "chat_template", None)
    assert Template.choose("auto", tokenizer) == (Template.parse("seed"), "auto_seed")
    assert Template.choose("seed", tokenizer) == (Template.parse("seed"), "chosen")


@pytest.mark.parametrize("name, place", [
    ("bad_json.jsonl", "bad_json.jsonl 第 7 行："),
    ("no_output.jsonl", "no_output.jsonl 第 12 行："),
    ("no_output.csv", "no_output.csv 第 5 行："),
    ("not_utf8.jsonl", "not_utf8.jsonl 第 3 行："),
    ("unknown.jsonl", "unknown.jsonl 第 1 行："),
])
def test_a_bad_row_is_named_in_chinese_words_in_the_chinese_message(name, place):
    """The Chinese message once named the place in English ('bad.jsonl line 2：第 33 列 JSON 格式错误')."""
    with pytest.raises(UserError) as caught:
        data.prepare(PrepareConfig(input=str(DATA / name), template="seed"))
    assert caught.value.zh.startswith(place) and " line " not in caught.value.zh, caught.value.zh
    assert str(caught.value).startswith(place.split(" ")[0] + " line "), str(caught.value)


@pytest.mark.parametrize("name, text, en, zh", [
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}\n',
     "chat.jsonl line 1: message 2: ", "chat.jsonl 第 1 行 第 2 条消息："),
    ("rows.json", '[\n{"instruction": "a", "output": "b"},\n{"instruction": "c"}\n]\n',
     "rows.json row 2 (line 3): ", "rows.json 第 2 条（第 3 行）："),
])
def test_a_message_in_a_row_and_a_row_of_an_array_are_named_in_both_languages(tmp_path, name, text, en, zh):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        data.prepare(PrepareConfig(input=str(path), template="seed"))
    assert str(caught.value).startswith(en) and caught.value.zh.startswith(zh), (str(caught.value), caught.value.zh)


def test_broken_rows_are_explained_in_chinese_words_on_a_chinese_page(tmp_path):
    """A broken row's message and the count of rows dropped, on a Chinese page: Chinese words, not Python's JSON
    reader's English ("Expecting ',' delimiter") or the manifest's reason keys ("invalid JSON: 2")."""
    from ui.data import _stats_text

    with pytest.raises(UserError) as caught:
        data.prepare(PrepareConfig(input=str(DATA / "bad_json.jsonl"), template="seed"))
    assert "这里缺少逗号 ','" in caught.value.zh and "Expecting" not in caught.value.zh, caught.value.zh
    m = prep(tmp_path, DATA / "mixed_bad.jsonl", skip_bad=True)
    zh, en = _stats_text(m, "zh"), _stats_text(m, "en")
    assert "JSON 格式错误: 2" in zh and "缺少 `output` 字段: 1" in zh and "回答为空: 1" in zh, zh
    assert not re.search(r"invalid|output:|empty", zh), zh
    assert "invalid JSON: 2" in en and "no output: 1" in en, en
