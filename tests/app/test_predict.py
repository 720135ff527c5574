"""`textrnn-predict`: files classified and scored through the server's own code, resumed
after an interruption, OpenAI batch files answered as vLLM's run-batch does, exit status 2
for bad input."""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.predict import main

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["a gripping, beautiful film", "dull and lifeless", 'the "plot" was, well, tedious',
         "superb acting and a moving story", "boring", "", "it was quite bad and clumsy",
         "wonderful\nand funny"]


def predict(*args: str | Path) -> int:
    return main([str(a) for a in args] + ["--threads", "1"])


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        return list(csv.DictReader(f, delimiter=delimiter, quoting=quoting))


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "reviews.csv",
                     [{"id": str(i), "text": t, "label": "?"} for i, t in enumerate(TEXTS)])


def test_classify_a_csv_keeps_its_columns_and_adds_label_and_scores(
        models_dir: Path, reviews: Path) -> None:
    assert predict("classify", reviews, "--models-dir", models_dir) == 0
    out = read_csv(reviews.with_name("reviews.predictions.csv"))
    assert list(out[0]) == ["id", "text", "label", "predicted_label", "score_negative",
                            "score_positive", "predicted_by"]
    assert [r["text"] for r in out] == TEXTS  # quotes, commas and newlines survive
    for row in out:
        scores = {"negative": float(row["score_negative"]), "positive": float(row["score_positive"])}
        assert sum(scores.values()) == pytest.approx(1, abs=1e-5)
        assert row["predicted_label"] == max(scores, key=lambda k: scores[k])
        assert row["predicted_by"].startswith("sentiment@")
    assert out[0]["predicted_label"] == "positive" and out[1]["predicted_label"] == "negative"


def test_a_prediction_is_the_servers_classify_answer(models_dir: Path, reviews: Path,
                                                     client: TestClient) -> None:
    # The same texts in one batch, as the server batches a request's inputs: the same numbers.
    assert predict("classify", reviews, "--models-dir", models_dir, "--batch-size", "8") == 0
    out = read_csv(reviews.with_name("reviews.predictions.csv"))
    answer = client.post("/classify", json={"inputs": TEXTS, "model": "sentiment"})
    assert answer.status_code == 200
    assert out[0]["predicted_by"] == answer.headers["X-Model"]
    for row, labels in zip(out, answer.json(), strict=True):
        assert row["predicted_label"] == labels[0]["label"]
        for x in labels:
            assert float(row[f"score_{x['label']}"]) == x["score"]


def test_classify_jsonl_keeps_every_key_and_type(models_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"review": t, "meta": {"n": i}, "stars": i}) + "\n"
                              for i, t in enumerate(TEXTS[:3])) + "\n", encoding="utf-8")
    out = tmp_path / "labelled.jsonl"
    assert predict("classify", source, "--column", "review", "--output", out,
                   "--model", models_dir / "sentiment") == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["review"] for r in rows] == TEXTS[:3]
    assert rows[1]["meta"] == {"n": 1} and rows[2]["stars"] == 2
    assert [list(r)[-4:] for r in rows] == [["predicted_label", "score_negative",
                                            "score_positive", "predicted_by"]] * 3
    assert isinstance(rows[0]["score_positive"], float)


def test_score_a_tsv_gives_the_servers_score(models_dir: Path, tmp_path: Path,
                                              client: TestClient) -> None:
    texts = ["ROMEO:", "But soft, what light through yonder window breaks?", "x", ""]
    source = tmp_path / "lines.tsv"
    source.write_text("n\tline\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(texts)),
                      encoding="utf-8")
    assert predict("score", source, "--column", "line", "--models-dir", models_dir,
                   "--batch-size", "4") == 0
    out = read_csv(tmp_path / "lines.predictions.tsv", "\t")
    assert list(out[0]) == ["n", "line", "tokens", "log_prob", "perplexity", "bits_per_char",
                            "predicted_by"]
    server = client.post("/score", json={"inputs": texts, "model": "shakespeare"}).json()
    for row, expected in zip(out, server, strict=True):
        assert int(row["tokens"]) == expected["tokens"]
        assert float(row["log_prob"]) == expected["log_prob"]
        assert (row["perplexity"] or None) == (None if expected["perplexity"] is None
                                                else str(expected["perplexity"]))
    assert out[2]["tokens"] == "0" and out[2]["perplexity"] == ""  # one character: no prefix


@pytest.mark.parametrize("cut", [12, -3], ids=["row-short-of-fields", "last-field-cut"])
def test_an_interrupted_run_continues_after_its_whole_rows(
        models_dir: Path, reviews: Path, caplog: pytest.LogCaptureFixture, cut: int) -> None:
    assert predict("classify", reviews, "--models-dir", models_dir, "--batch-size", "2") == 0
    output = reviews.with_name("reviews.predictions.csv")
    whole = read_csv(output)
    lines = output.read_text(encoding="utf-8").split("\n")
    # A kill in the middle of a write: three whole rows and part of the fourth.
    output.write_text("\n".join(lines[:4]) + "\n" + lines[4][:cut], encoding="utf-8")
    caplog.set_level(logging.INFO, logger="app.predict")
    assert predict("classify", reviews, "--models-dir", models_dir, "--batch-size", "2") == 0
    assert "continuing after row 3" in caplog.text
    assert "done: 5 rows" in caplog.text
    again = read_csv(output)
    assert [r["text"] for r in again] == TEXTS
    for a, b in zip(again, whole, strict=True):
        assert a["predicted_label"] == b["predicted_label"]
        assert float(a["score_positive"]) == pytest.approx(float(b["score_positive"]), abs=1e-5)
    caplog.clear()
    assert predict("classify", reviews, "--models-dir", models_dir) == 0  # nothing left to do
    assert "done: 0 rows" in caplog.text and read_csv(output) == again


def test_an_output_that_does_not_continue_the_run_is_refused(
        models_dir: Path, reviews: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = reviews.with_name("reviews.predictions.csv")
    assert predict("classify", reviews, "--models-dir", models_dir) == 0
    write_csv(reviews, [{"id": "0", "text": "another text", "label": "?"}])
    with pytest.raises(SystemExit) as stop:
        predict("classify", reviews, "--models-dir", models_dir)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not continue this run" in err and "--overwrite" in err
    assert predict("classify", reviews, "--models-dir", models_dir, "--overwrite") == 0
    assert [r["text"] for r in read_csv(output)] == ["another text"]


@pytest.mark.parametrize(("args", "names"), [
    (["classify", "{dir}/missing.csv"], "missing.csv: no such file"),
    (["classify", "{dir}/reviews.txt"], "unknown file type '.txt'"),
    (["classify", "{reviews}", "--column", "body"], "--column 'body' is not a column"),
    (["classify", "{reviews}", "--model", "nosuch"], "--model nosuch: no model folder"),
    (["score", "{reviews}", "--model", "sentiment"], "--model sentiment is a classification"),
    (["classify", "{reviews}", "--output", "{reviews}"], "--output"),
    (["classify", "{reviews}", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["batch", "{reviews}"], "a .jsonl file"),
])
def test_bad_input_exits_2_with_one_line_naming_it(
        models_dir: Path, reviews: Path, args: list[str], names: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    (reviews.parent / "reviews.txt").write_text("text\nhello\n", encoding="utf-8")
    argv = [a.format(dir=reviews.parent, reviews=reviews) for a in args]
    with pytest.raises(SystemExit) as stop:
        predict(*argv, "--models-dir", models_dir)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("textrnn-predict: error: ") and names in last, last


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(
        models_dir: Path, reviews: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock = reviews.with_name(".reviews.predictions.csv.lock")
    with lock.open("w") as held:
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as stop:
            predict("classify", reviews, "--models-dir", models_dir)
    assert stop.value.code == 2
    assert "another run (pid 4242) is writing it" in capsys.readouterr().err
    assert not reviews.with_name("reviews.predictions.csv").exists()
    assert predict("classify", reviews, "--models-dir", models_dir) == 0  # once it is gone
    assert not lock.exists()


BATCH = [
    {"custom_id": "completion", "method": "POST", "url": "/v1/completions",
     "body": {"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0}},
    {"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "shakespeare", "messages": [{"role": "user", "content": "Speak."}],
              "max_tokens": 8, "seed": 3}},
    "this line is not JSON",
    {"custom_id": "embeddings", "method": "POST", "url": "/v1/embeddings",
     "body": {"model": "shakespeare", "input": "a"}},
    {"custom_id": "refused", "method": "POST", "url": "/v1/completions",
     "body": {"model": "shakespeare", "prompt": "x", "max_tokens": 0}},
    {"custom_id": "streamed", "method": "POST", "url": "/v1/completions",
     "body": {"model": "shakespeare", "prompt": "x", "stream": True}},
    {"custom_id": "get", "method": "GET", "url": "/v1/completions", "body": {}},
]


def write_batch(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def test_an_openai_batch_file_is_answered_line_by_line(
        models_dir: Path, tmp_path: Path, client: TestClient) -> None:
    source = write_batch(tmp_path / "requests.jsonl", BATCH)
    assert predict("batch", source, "--models-dir", models_dir) == 0
    out = [json.loads(x) for x in (tmp_path / "requests.results.jsonl").read_text().splitlines()]
    assert [o["custom_id"] for o in out] == ["completion", "chat", None, "embeddings", "refused",
                                             "streamed", "get"]
    assert all(set(o) == {"id", "custom_id", "response", "error"} for o in out)
    completion, chat, broken, embeddings, refused, streamed, get = out
    assert completion["error"] is None and completion["response"]["status_code"] == 200
    assert completion["response"]["request_id"]
    server = client.post("/v1/completions", json=BATCH[0]["body"]).json()  # type: ignore[index]
    body = completion["response"]["body"]
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == server["choices"][0]["text"]  # greedy: the same text
    assert body["usage"] == server["usage"]
    assert chat["response"]["body"]["object"] == "chat.completion"
    assert chat["response"]["body"]["usage"]["completion_tokens"] <= 8
    assert broken["response"] is None and broken["error"]["code"] == "invalid_json_line"
    assert "line 3" in broken["error"]["message"]
    assert embeddings["error"]["code"] == "invalid_url"
    assert "/v1/completions, /v1/chat/completions" in embeddings["error"]["message"]
    # A request the server refuses is answered with the server's status and OpenAI error body.
    assert refused["error"] is None and refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["param"] == "max_tokens"
    assert streamed["error"]["code"] == "invalid_request" and "stream" in streamed["error"]["message"]
    assert get["error"]["code"] == "invalid_method"


def test_a_batch_run_continues_after_the_lines_written(
        models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "any", "prompt": "JULIET:", "max_tokens": 4, "temperature": 0}}
             for i in range(6)]
    source = write_batch(tmp_path / "b.jsonl", lines)
    output = tmp_path / "b.results.jsonl"
    output.write_text("", encoding="utf-8")
    written = []
    for i in range(2):  # two answers of an earlier run, and half of a third
        written.append(json.dumps({"id": "x", "custom_id": f"r{i}", "response": None,
                                   "error": None}))
    output.write_text("\n".join(written) + "\n" + '{"id": "x", "cust', encoding="utf-8")
    caplog.set_level(logging.INFO, logger="app.predict")
    assert predict("batch", source, "--models-dir", models_dir, "--concurrency", "3") == 0
    assert "continuing after line 2" in caplog.text
    out = [json.loads(x) for x in output.read_text().splitlines()]
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(6)]
    assert out[0]["response"] is None  # kept as written
    assert {o["response"]["status_code"] for o in out[2:]} == {200}
    texts = {o["response"]["body"]["choices"][0]["text"] for o in out[2:]}
    assert len(texts) == 1  # greedy, batched together or not: one text
    # Another input's output is not continued.
    write_batch(source, [{**lines[0], "custom_id": "other"}])
    with pytest.raises(SystemExit) as stop:
        predict("batch", source, "--models-dir", models_dir)
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err


def rows_per_step(model: str) -> tuple[float, float]:
    """(rows, steps) the generation engine of `model` has run in this process so far."""
    def value(name: str) -> float:
        return REGISTRY.get_sample_value(f"rnn_batch_size_{name}", {"model": model}) or 0.0
    return value("sum"), value("count")


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_batch_run_batches_as_many_requests_as_it_has_in_flight(
        models_dir: Path, tmp_path: Path, concurrency: int) -> None:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 16,
                       "temperature": 0}} for i in range(8)]
    source = write_batch(tmp_path / "b.jsonl", lines)
    rows, steps = rows_per_step("shakespeare")
    assert predict("batch", source, "--models-dir", models_dir,
                   "--concurrency", str(concurrency)) == 0
    more_rows, more_steps = rows_per_step("shakespeare")
    mean = (more_rows - rows) / (more_steps - steps)
    # One at a time: one row per step. Eight in flight: the engine steps them together (the
    # first may start alone, before the others arrive).
    assert mean == 1 if concurrency == 1 else mean > 4


def test_the_console_script_is_python_dash_m_app_predict(tmp_path: Path) -> None:
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["textrnn-predict"] == "app.predict:main"
    done = subprocess.run([sys.executable, "-m", "app.predict", "classify",
                           str(tmp_path / "none.csv")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("none.csv: no such file")


WRITTEN = re.compile(r"<!-- written:(?P<path>\S+) -->\n```\w*\n(?P<body>(?:(?!```)[^\n]*\n)*)```\n"
                     r"<!-- /written -->")
VOLATILE = {"id", "request_id", "created"}  # new on every run


def documented_commands(page: Path) -> list[list[str]]:
    """The `textrnn-predict` commands of a page's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(".venv/bin/textrnn-predict "):
                commands.append(shlex.split(line, comments=True)[1:])
    return commands


def same(documented: Any, actual: Any, key: str = "") -> bool:
    """Equal, numbers within what float16 weights on another CPU give, run ids aside."""
    if key in VOLATILE:
        return True
    if isinstance(documented, dict) and isinstance(actual, dict):
        return documented.keys() == actual.keys() and all(
            same(v, actual[k], k) for k, v in documented.items())
    if isinstance(documented, list) and isinstance(actual, list):
        return len(documented) == len(actual) and all(
            same(a, b) for a, b in zip(documented, actual, strict=True))
    try:
        return math.isclose(float(documented), float(actual), rel_tol=1e-3, abs_tol=1e-4)
    except (TypeError, ValueError):
        return bool(documented == actual)


def shape(message: str) -> str:
    """A log message with its numbers (figures, times, dates) as N."""
    return re.sub(r"\d+(?:[.,:-]\d+)*", "N", message)


def parsed(path: str, text: str) -> list[Any]:
    lines = text.splitlines()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in lines]
    return list(csv.reader(lines, delimiter="\t" if path.endswith(".tsv") else ","))


@pytest.mark.parametrize("page", ["README.md", "docs/predict.md"])
def test_the_documented_commands_write_what_the_page_shows(
        page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    if not (ROOT / "models" / "sentiment" / "model.safetensors").is_file():
        pytest.skip("models/ is absent")
    text = (ROOT / page).read_text(encoding="utf-8")
    commands = documented_commands(ROOT / page)
    assert [c[0] for c in commands][:2] == ["classify", "score" if "docs" in page else "batch"]
    shutil.copytree(ROOT / "data", tmp_path / "data")  # a clone's data/, outputs written there
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="app.predict")
    for command in commands:
        assert main([*command, "--threads", "1"]) == 0, shlex.join(command)
    logged = {shape(r.getMessage()) for r in caplog.records if r.name == "app.predict"}
    for block in re.findall(r"<!-- logged -->\n```\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line != "...":
                assert shape(line.partition(" [-] ")[2]) in logged, line
    shown = list(WRITTEN.finditer(text))
    assert len(shown) == text.count("<!-- written:")
    for match in shown:
        path, body = match["path"], match["body"]
        lines = (tmp_path / path).read_text(encoding="utf-8").splitlines()[:body.count("\n")]
        documented, actual = parsed(path, body), parsed(path, "\n".join(lines))
        assert same(documented, actual), (path, actual)
