"""POST /inside/memory, /inside/units and /explain on the tiny trained models: the values are
the net's, the limits hold at their value and refuse one past, bad input gets a 4xx naming the
field."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.inside_schemas import EXPLAIN_MAX_WORK, MEMORY_MAX_VALUES
from app.main import create_app
from app.routes.inside import INSIDE_MAX_PENDING
from app.settings import Settings
from textrnn.attribution import Attribution
from textrnn.memory import rank_units

TEXT = "ROMEO:\nBut soft, what light.\n\nJULIET:\nO Romeo, Romeo.\n\nROMEO:\nShall I hear more?\n"
KEY = "inside-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def app(models_dir: Path) -> FastAPI:
    return create_app(Settings(models_dir=models_dir, api_keys=[KEY], max_input_chars=4000,
                               generation_worker="thread"))


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    """The one client that runs the app's lifespan (the models load once)."""
    with TestClient(app, headers=AUTH) as c:
        yield c


def _net(app: FastAPI, name: str) -> Any:
    return app.state.registry.entries[name].artifact.net


def _error(client: TestClient, path: str, body: dict[str, Any], status: int = 422) -> str:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    message: str = r.json()["detail"]
    return message


def test_memory_of_the_char_lm_is_torchs_hidden_state(app: FastAPI, client: TestClient) -> None:
    r = client.post("/inside/memory", json={"inputs": TEXT, "model": "shakespeare",
                                            "series": ["hidden", "update"], "units": [3, 0, 31]})
    assert r.status_code == 200, r.text
    assert r.headers["X-Model"].startswith("shakespeare")
    body = r.json()
    assert (body["cell"], body["layer"], body["units"]) == ("gru", body["layers"] - 1, [3, 0, 31])
    assert [s["text"] for s in body["steps"]] == list(TEXT)
    assert body["steps"][7] == {"text": "B", "start": 7, "end": 8}
    net = _net(app, "shakespeare")
    ids = torch.tensor([app.state.registry.entries["shakespeare"].artifact.tokenizer.encode(
        TEXT, add_special_tokens=False).ids])
    with torch.no_grad():
        out, _ = net.rnn.source(net.embedding(ids)) if hasattr(net.rnn, "source") else net.rnn(
            net.embedding(ids))  # 1 T H
    expected = out[0][:, [3, 0, 31]]
    torch.testing.assert_close(torch.tensor(body["series"]["hidden"]), expected, atol=1e-4, rtol=0)
    update = torch.tensor(body["series"]["update"])
    assert update.shape == (len(TEXT), 3) and update.min() >= 0 and update.max() <= 1


def test_memory_of_the_classifier_steps_over_words(client: TestClient) -> None:
    text = "The film's acting was GREAT, really."
    body = client.post("/inside/memory", json={"inputs": text, "model": "sentiment",
                                               "series": ["hidden", "cell", "forget"]}).json()
    assert body["cell"] == "lstm" and body["truncated"] is False
    assert [s["text"] for s in body["steps"]] == ["The", "film", "'s", "acting", "was", "GREAT",
                                                 ",", "really", "."]
    assert all(text[s["start"]:s["end"]] == s["text"] for s in body["steps"])
    assert set(body["series"]) == {"hidden", "cell", "forget"}
    assert len(body["series"]["cell"]) == 9 and len(body["series"]["cell"][0]) == 16


def test_the_value_cap_holds_at_its_limit_and_refuses_one_past(client: TestClient) -> None:
    # 400 steps x 500 units (ids may repeat) = the limit; 409 x 489 = one value past it.
    r = client.post("/inside/memory", json={"inputs": "a" * 400, "units": [1] * 500})
    assert r.status_code == 200 and len(r.json()["series"]["hidden"][0]) == 500
    assert MEMORY_MAX_VALUES == 400 * 500
    message = _error(client, "/inside/memory", {"inputs": "a" * 409, "units": [1] * 489})
    assert "200001 values" in message and "MEMORY_MAX_VALUES" in message


def test_the_text_limit_is_rnn_max_input_chars(client: TestClient) -> None:
    for path in ("/inside/memory", "/inside/units", "/explain"):
        body: dict[str, Any] = {"inputs": "x" * 4001, "model": "sentiment"}
        if path == "/inside/units":
            body["spans"] = [{"start": 0, "end": 1}]
        message = _error(client, path, body)
        assert "4001 characters" in message and "RNN_MAX_INPUT_CHARS" in message
    ok = client.post("/inside/units", json={"inputs": "x y " * 1000, "model": "sentiment",
                                            "spans": [{"start": 0, "end": 1}]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["truncated"] is True and len(ok.json()["steps"]) == 256  # max_length


def test_units_rank_by_auc_and_return_their_values(app: FastAPI, client: TestClient) -> None:
    spans = [{"start": 0, "end": 6}, {"start": 29, "end": 36}, {"start": 55, "end": 61}]
    body = client.post("/inside/units", json={"inputs": TEXT, "spans": spans, "top_k": 32}).json()
    assert body["method"] == "auc" and body["inside_steps"] == 6 + 7 + 6
    separation = [u["separation"] for u in body["units"]]
    assert separation == sorted(separation, reverse=True) and len(separation) == 32
    hidden = torch.tensor(client.post("/inside/memory", json={"inputs": TEXT}).json()
                          ["series"]["hidden"])  # T U
    inside = torch.zeros(len(TEXT), dtype=torch.bool)
    for s in spans:
        inside[s["start"]:s["end"]] = True
    auc = rank_units(hidden, inside)
    for rank, unit in enumerate(body["units"]):
        assert unit["auc"] == pytest.approx(float(auc[unit["unit"]]), abs=2e-3)
        assert unit["higher_inside"] == (unit["mean_inside"] > unit["mean_outside"]) or \
            abs(unit["auc"] - 0.5) < 0.1
        column = [row[rank] for row in body["values"]]
        assert column == pytest.approx(hidden[:, unit["unit"]].tolist(), abs=1e-4)


def test_top_k_at_its_limit_and_one_past(client: TestClient) -> None:
    spans = [{"start": 0, "end": 6}]
    assert len(client.post("/inside/units", json={"inputs": TEXT, "spans": spans,
                                                  "top_k": 32}).json()["units"]) == 32
    assert "top_k" in str(_error(client, "/inside/units",
                                 {"inputs": TEXT, "spans": spans, "top_k": 33}))


def test_integrated_gradients_add_up_to_the_decision(app: FastAPI, client: TestClient) -> None:
    text = "the acting was wonderful and the plot gripping"
    body = client.post("/explain", json={"inputs": text, "steps": 128}).json()
    classified = client.post("/classify", json={"inputs": text}).json()[0]
    assert [s["label"] for s in body["scores"]] == [s["label"] for s in classified]
    assert [s["score"] for s in body["scores"]] == pytest.approx([s["score"] for s in classified])
    assert body["label"] == classified[0]["label"] == "positive"
    assert [w["text"] for w in body["words"]] == text.split()
    total = sum(w["contribution"] for w in body["words"])
    assert total == pytest.approx(body["log_prob"] - body["baseline_log_prob"], abs=0.02)
    best = max(body["words"], key=lambda w: w["contribution"])
    assert best["text"] in ("wonderful", "gripping")


def test_occlusion_is_classify_without_the_word(client: TestClient) -> None:
    text = "a dull film but the cast was brilliant"
    body = client.post("/explain", json={"inputs": text, "method": "occlusion",
                                         "label": "negative"}).json()
    assert body["label"] == "negative" and body["baseline_log_prob"] is None
    words = text.split()
    for i, word in enumerate(body["words"]):
        without = " ".join(words[:i] + words[i + 1:])
        scores = client.post("/classify", json={"inputs": without}).json()[0]
        assert word["without"] == scores[0]["label"]
        p = next(s["score"] for s in scores if s["label"] == "negative")
        assert word["contribution"] == pytest.approx(body["log_prob"] - torch.tensor(p).log().item(),
                                                     abs=1e-3)


def test_explain_work_limits_at_their_value_and_one_past(client: TestClient) -> None:
    words = " ".join(["good"] * 64)
    assert client.post("/explain", json={"inputs": words, "steps": EXPLAIN_MAX_WORK // 64}
                       ).status_code == 200
    message = _error(client, "/explain", {"inputs": words, "steps": EXPLAIN_MAX_WORK // 64 + 1})
    assert "EXPLAIN_MAX_WORK" in message and "8256" in message and "lower steps to 128" in message
    # Occlusion: at most 256 words, which the classifier's max_length (256) never passes.
    assert client.post("/explain", json={"inputs": "good " * 300, "method": "occlusion"}
                       ).json()["truncated"] is True


@pytest.mark.parametrize(("path", "body", "status", "named"), [
    ("/inside/memory", {"inputs": "x", "model": "nope"}, 404, "available: sentiment, shakespeare"),
    ("/inside/memory", {"inputs": "x", "layer": 1}, 422, "layer is 1"),
    ("/inside/memory", {"inputs": "x", "layer": "0"}, 422, "layer"),
    ("/inside/memory", {"inputs": "x", "units": [32]}, 422, "units[0] is 32"),
    ("/inside/memory", {"inputs": "x", "units": [0, -1]}, 422, "units[1] is -1"),
    ("/inside/memory", {"inputs": "x", "series": ["cell"]}, 422, "series[0] is 'cell'"),
    ("/inside/memory", {"inputs": "x", "series": ["mood"]}, 422, "series"),
    ("/inside/memory", {"inputs": ""}, 422, "inputs"),
    ("/inside/memory", {"inputs": "   ", "model": "sentiment"}, 422, "no tokens"),
    ("/inside/units", {"inputs": "abc", "spans": [{"start": 1, "end": 4}]}, 422,
     "spans[0].end is 4; the text has 3 characters"),
    ("/inside/units", {"inputs": "abc", "spans": [{"start": 2, "end": 2}]}, 422, "spans[0] is empty"),
    ("/inside/units", {"inputs": "abc", "spans": [{"start": 0, "end": 3}]}, 422, "mark 3 of"),
    ("/inside/units", {"inputs": "abc", "spans": []}, 422, "spans"),
    ("/explain", {"inputs": "fine", "label": "meh"}, 422, "negative, positive"),
    ("/explain", {"inputs": "fine", "model": "shakespeare"}, 422, "classification model"),
    ("/explain", {"inputs": "fine", "steps": 0}, 422, "steps"),
    ("/explain", {"inputs": "fine", "method": "shap"}, 422, "method"),
])
def test_bad_input_is_a_4xx_naming_the_field(client: TestClient, path: str, body: dict[str, Any],
                                             status: int, named: str) -> None:
    assert named in str(_error(client, path, body, status))


def test_the_routes_take_the_api_key(app: FastAPI, client: TestClient) -> None:
    anonymous = TestClient(app)  # no lifespan of its own: the models stay loaded
    for path in ("/inside/memory", "/inside/units", "/explain"):
        assert anonymous.post(path, json={"inputs": "x"}).status_code == 401


def test_waiting_requests_are_bounded_per_model(app: FastAPI, client: TestClient) -> None:
    entry = app.state.registry.entries["shakespeare"]
    release = threading.Event()
    blocker = entry.executor.submit(release.wait, 30)  # the inference thread is busy
    try:
        with ThreadPoolExecutor(INSIDE_MAX_PENDING) as pool:
            waiting = [pool.submit(client.post, "/inside/memory", json={"inputs": "ab"})
                       for _ in range(INSIDE_MAX_PENDING)]
            deadline = time.monotonic() + 10
            while entry.looking_inside < INSIDE_MAX_PENDING:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            refused = client.post("/inside/memory", json={"inputs": "ab"})
            assert refused.status_code == 503 and "INSIDE_MAX_PENDING" in refused.json()["detail"]
            # Another model's requests are not held up by this one's.
            assert client.post("/explain", json={"inputs": "good"}).status_code == 200
            release.set()
            assert [f.result().status_code for f in waiting] == [200] * INSIDE_MAX_PENDING
    finally:
        release.set()
        blocker.result()
    assert entry.looking_inside == 0


def test_the_openapi_document_states_the_limits(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("MemoryRequest", "UnitsRequest", "ExplainRequest"):
        assert schemas[name]["properties"]["inputs"]["maxLength"] == 4000
    assert schemas["UnitsRequest"]["properties"]["top_k"]["maximum"] == 32
    for path in ("/inside/memory", "/inside/units", "/explain"):
        operation = spec["paths"][path]["post"]
        assert {"401", "404", "422", "503", "504"} <= set(operation["responses"])
        assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    assert "MEMORY_MAX_VALUES" in spec["paths"]["/inside/memory"]["post"]["description"]
    assert "EXPLAIN_MAX_WORK" in spec["paths"]["/explain"]["post"]["description"]


def test_marked_spans_at_their_limit_and_one_past(client: TestClient) -> None:
    text = "ab" * 65
    spans = [{"start": 2 * i, "end": 2 * i + 1} for i in range(65)]
    r = client.post("/inside/units", json={"inputs": text, "spans": spans[:64]})
    assert r.status_code == 200 and r.json()["inside_steps"] == 64
    detail = str(_error(client, "/inside/units", {"inputs": text, "spans": spans}))
    assert "'spans'" in detail and "at most 64 items" in detail


def _slow_occlusion(runs: list[int], pieces: int = 10, each_s: float = 0.15) -> Any:
    """An occlusion in `pieces` pieces of `each_s` seconds, each noted in `runs` as it ends."""
    def occlusion_pieces(net: Any, ids: list[int], label: int, rows: int = 0) -> Any:
        for k in range(pieces):
            if k:
                yield
            time.sleep(each_s)
            runs.append(k)
        return Attribution(torch.zeros(len(ids)), 0.0, without=[label] * len(ids))
    return occlusion_pieces


def _explaining(pool: ThreadPoolExecutor, client: TestClient, runs: list[int]) -> Future[Any]:
    """An occlusion /explain sent from `pool`, once its first piece has run."""
    explaining = pool.submit(client.post, "/explain",
                             json={"inputs": "a good film", "method": "occlusion"})
    deadline = time.monotonic() + 10
    while not runs:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return explaining


def test_the_models_batches_go_between_the_pieces_of_a_long_look_inside(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    monkeypatch.setattr("app.inside.occlusion_pieces", _slow_occlusion(runs))  # 1.5 s in all
    with ThreadPoolExecutor(1) as pool:
        explaining = _explaining(pool, client, runs)
        started = time.perf_counter()
        r = client.post("/classify", json={"inputs": "fine"})  # the same model's batch
        waited = time.perf_counter() - started
        assert r.status_code == 200, r.text
        assert waited < 0.6, f"/classify waited {waited:.2f} s behind the explanation"
        assert len(runs) < 10  # it came before the explanation ended
        assert explaining.result().status_code == 200
    assert runs == list(range(10))


def test_the_pieces_left_at_the_deadline_are_not_run(models_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    monkeypatch.setattr("app.inside.occlusion_pieces", _slow_occlusion(runs))
    app = create_app(Settings(models_dir=models_dir, request_timeout_s=0.5,
                              generation_worker="thread"))
    with TestClient(app) as c:
        r = c.post("/explain", json={"inputs": "a good film", "method": "occlusion"})
        assert r.status_code == 504 and "RNN_REQUEST_TIMEOUT_S" in r.json()["detail"]
        time.sleep(0.5)  # past the piece that was running at the deadline
        assert c.post("/classify", json={"inputs": "fine"}).status_code == 200
        assert 2 <= len(runs) <= 5, runs
        assert app.state.registry.entries["sentiment"].looking_inside == 0


def test_a_reload_lets_a_look_inside_finish_on_the_version_it_began_on(
        models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    monkeypatch.setattr("app.inside.occlusion_pieces", _slow_occlusion(runs, pieces=6))
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    app = create_app(Settings(models_dir=models, admin_keys=["admin"], generation_worker="thread"))
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        explaining = _explaining(pool, c, runs)
        weights = models / "sentiment" / "model.safetensors"
        weights.write_bytes(weights.read_bytes())  # a new version of the same model
        reload = c.post("/admin/reload", headers={"Authorization": "Bearer admin"})
        assert reload.status_code == 200 and "sentiment" in reload.json()["loaded"], reload.text
        answer = explaining.result()
        assert answer.status_code == 200, answer.text  # its version served it to the end
        assert runs == list(range(6))
