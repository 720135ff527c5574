"""The two findings of docs/inside.md, reproduced from the API on the shipped models."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import ROOT

MODELS = ROOT / "models"
pytestmark = pytest.mark.skipif(not (MODELS / "shakespeare" / "model.safetensors").is_file(),
                                reason="models/ is absent")

# The Tempest, I.2: from the last 2% of tinyshakespeare, which the unit was not picked on.
TEMPEST = """ARIEL:
Not a soul
But felt a fever of the mad and play'd
Some tricks of desperation. All but mariners
Plunged in the foaming brine and quit the vessel,
Then all afire with me: the king's son, Ferdinand,
With hair up-staring,--then like reeds, not hair,--
Was the first man that leap'd; cried, 'Hell is empty
And all the devils are here.'

PROSPERO:
Why that's my spirit!
But was not this nigh shore?

ARIEL:
Close by, my master.

PROSPERO:
But are they, Ariel, safe?

ARIEL:
Not a hair perish'd;
On their sustaining garments not a blemish,
But fresher than before: and, as thou badest me,
In troops I have dispersed them 'bout the isle.
The king's son have I landed by himself;
Whom I left cooling of the air with sighs
In an odd angle of the isle and sitting,
His arms in this sad knot.

PROSPERO:
Of the king's ship
The mariners say how thou hast disposed
And all the rest o' the fleet.
"""
SPEAKER_UNIT = 413  # layer 1 of models/shakespeare
LINE_UNIT = 10


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(models_dir=MODELS, generation_worker="thread"))
    with TestClient(app) as c:
        yield c


def test_one_unit_of_the_shakespeare_gru_marks_the_speakers_name(client: TestClient) -> None:
    spans = [{"start": m.start(1), "end": m.end(1)}
             for m in re.finditer(r"(?:^|\n\n)([^\n]+:)\n", TEMPEST)]
    assert len(spans) == 6
    r = client.post("/inside/units", json={"inputs": TEMPEST, "model": "shakespeare",
                                           "spans": spans, "top_k": 3})
    assert r.status_code == 200, r.text
    best = r.json()["units"][0]
    assert (best["unit"], best["higher_inside"]) == (SPEAKER_UNIT, True)
    assert best["auc"] > 0.99
    assert best["mean_inside"] > 0.5 > -0.5 > best["mean_outside"]


def test_another_tracks_how_far_into_the_line_the_text_is(client: TestClient) -> None:
    r = client.post("/inside/memory", json={"inputs": TEMPEST, "model": "shakespeare",
                                            "units": [LINE_UNIT]})
    values = torch.tensor([row[0] for row in r.json()["series"]["hidden"]])  # T
    column, position = 0, []
    for ch in TEMPEST:
        position.append(column)
        column = 0 if ch == "\n" else column + 1
    r_value = torch.corrcoef(torch.stack([values, torch.tensor(position, dtype=torch.float)]))[0, 1]
    assert r_value > 0.75


def test_not_flips_good_but_not_bad(client: TestClient) -> None:
    good = client.post("/explain", json={"inputs": "the movie was good", "method": "occlusion"})
    assert good.json()["label"] == "positive"
    body = client.post("/explain", json={"inputs": "the movie was not good",
                                         "method": "occlusion"}).json()
    assert body["label"] == "negative"
    flips = [w["text"] for w in body["words"] if w["without"] != body["label"]]
    assert flips == ["not"]  # without "not", the review is positive again
    ig = client.post("/explain", json={"inputs": "the movie was not good"}).json()
    by_word = {w["text"]: w["contribution"] for w in ig["words"]}
    assert by_word["not"] > 0.5 and by_word["good"] < -0.5  # "good" still pulls the other way
    # "not bad" is read as bad: the model's negation covers a positive word only.
    bad = client.post("/explain", json={"inputs": "the film is not bad"}).json()
    assert bad["label"] == "negative" and bad["scores"][0]["score"] > 0.9
    assert max(bad["words"], key=lambda w: w["contribution"])["text"] == "bad"
