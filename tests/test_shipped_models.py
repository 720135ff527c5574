"""The models shipped in models/ load, pass every artifact check and answer sensibly."""

from __future__ import annotations

from pathlib import Path

import torch

from textrnn.artifact import load_artifact
from textrnn.inference import classify_logits, sequence_logprobs
from textrnn.nets import CharLM, RNNClassifier
from textrnn.tokenization import encode_batch

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_sentiment_model_reads_raw_reviews() -> None:
    art = load_artifact(MODELS / "sentiment")
    assert isinstance(art.net, RNNClassifier) and art.labels == ["negative", "positive"]
    assert art.config["metrics"]["dev"]["accuracy"] >= 0.80
    texts = ["It's a gripping, beautiful film with superb acting.",
             "A wonderful, funny and moving story.",
             "Dull, lifeless and far too long.",
             "The plot doesn't make sense and the acting is awful."]
    with torch.inference_mode():
        probs = torch.softmax(classify_logits(art.net, encode_batch(art.tokenizer, texts)), -1)
    assert probs[:2, 1].min() > 0.5 > probs[2:, 1].max()
    (MODELS / "sentiment" / "README.md").read_text().index("python -m training classify")


def test_shakespeare_model_prefers_shakespeare_to_noise() -> None:
    art = load_artifact(MODELS / "shakespeare")
    assert isinstance(art.net, CharLM)
    val = art.config["metrics"]["validation"]
    assert val["bits_per_char"] < 2.6
    texts = ["ROMEO:\nWhat light is this that breaks upon mine eyes?",
             "xq zvkw pplq jjjr ttkz qqqv wxwx zzkq mmvv qjqj ppqx"]
    with torch.inference_mode():
        logp = sequence_logprobs(art.net, encode_batch(art.tokenizer, texts))
    assert logp[0] > logp[1] + 40
    (MODELS / "shakespeare" / "README.md").read_text().index("python -m training lm")
