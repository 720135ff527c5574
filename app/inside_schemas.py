"""Request and response models of the routes that look inside a model: /inside/memory,
/inside/units and /explain, with their fixed limits (named in errors and in the OpenAPI page)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import MODEL_NAME, LabelScore, Text

__all__ = [
    "EXPLAIN_MAX_WORK",
    "MEMORY_MAX_VALUES",
    "Contribution",
    "ExplainRequest",
    "ExplainResponse",
    "MemoryRequest",
    "MemoryResponse",
    "Span",
    "Step",
    "UnitScore",
    "UnitsRequest",
    "UnitsResponse",
]

# Numbers one answer may carry: steps x units x series (memory), steps x top_k (units). About
# 2 MB of JSON; the whole hidden state of the shipped 2x512 GRU over 390 characters.
MEMORY_MAX_VALUES = 200_000
# Integrated gradients run steps x words word-positions through the net, forward and backward:
# 32 steps over the classifier's longest input (256 words) fits.
EXPLAIN_MAX_WORK = 8192
MAX_SPANS = 64
MAX_TOP_K = 32
SeriesName = Literal["hidden", "cell", "input", "forget", "candidate", "output", "reset",
                     "update", "new"]


class _Strict(BaseModel):
    # As the other routes: "5" is not an integer, and an unknown field is an error.
    model_config = ConfigDict(extra="forbid", strict=True)


class MemoryRequest(_Strict):
    """A text whose per-step recurrent values to return."""

    inputs: Text = Field(..., min_length=1, examples=["ROMEO:\nBut soft"],
                         description="The text the model reads, from a zero state.")
    model: str | None = Field(None, pattern=MODEL_NAME, examples=["shakespeare"],
                              description="Any model; default: the default generation model.")
    layer: int | None = Field(None, ge=0, description="0 is the layer next to the embedding; "
                              "default: the top layer.")
    units: list[int] | None = Field(None, min_length=1, max_length=4096, examples=[[7, 300]],
                                    description="Only these units (default: all). A "
                                    "bidirectional layer's reverse units follow the forward ones.")
    series: list[SeriesName] = Field(
        ["hidden"], min_length=1, max_length=6, examples=[["hidden", "update"]],
        description="hidden for every cell; cell, input, forget, candidate, output for an LSTM; "
                    "reset, update, new for a GRU.")


class Step(BaseModel):
    """One step: the token the model read, and where it is in the text."""

    text: str
    start: int = Field(description="Offset of the token's first character.")
    end: int = Field(description="Offset just past its last character.")


class MemoryResponse(BaseModel):
    """Each requested series as rows of steps, each row the chosen units' values."""

    model: str
    cell: str
    layer: int
    layers: int
    units: list[int]
    steps: list[Step]
    series: dict[str, list[list[float]]] = Field(
        description="name -> [steps][units], rounded to 4 decimal places.")
    truncated: bool = Field(description="The classifier read only its first max_length words.")


class Span(_Strict):
    """Characters [start, end) of the text."""

    start: int = Field(..., ge=0)
    end: int = Field(..., ge=1)


class UnitsRequest(_Strict):
    """A text with marked spans: which units tell the marked steps from the others?"""

    inputs: Text = Field(..., min_length=1, examples=["ROMEO:\nBut soft.\nJULIET:\nAy me!\n"])
    model: str | None = Field(None, pattern=MODEL_NAME, examples=["shakespeare"])
    layer: int | None = Field(None, ge=0, description="Default: the top layer.")
    spans: list[Span] = Field(..., min_length=1, max_length=MAX_SPANS,
                              examples=[[{"start": 0, "end": 6}, {"start": 17, "end": 24}]],
                              description="A step is inside when its token overlaps a span.")
    series: SeriesName = "hidden"
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="How many units to return.")


class UnitScore(BaseModel):
    """One unit's separation of the marked steps from the others."""

    unit: int
    auc: float = Field(description="P(a marked step's value > an unmarked one's); ties half.")
    separation: float = Field(description="|2 AUC - 1|: 1 separates perfectly, 0 is chance; "
                              "units are ranked by it.")
    higher_inside: bool = Field(description="Whether the unit is higher on the marked steps.")
    mean_inside: float
    mean_outside: float


class UnitsResponse(BaseModel):
    """The best units, and their values at every step (for a heat map)."""

    model: str
    layer: int
    series: str
    method: Literal["auc"] = "auc"
    steps: list[Step]
    inside_steps: int
    units: list[UnitScore]
    values: list[list[float]] = Field(description="[steps][top units], rounded to 4 places.")
    truncated: bool


class ExplainRequest(_Strict):
    """A text to classify, and how to share the decision out among its words."""

    inputs: Text = Field(..., min_length=1, examples=["not bad at all, a gripping film"])
    model: str | None = Field(None, pattern=MODEL_NAME, examples=["sentiment"])
    label: str | None = Field(None, max_length=200, description="The label to explain; "
                              "default: the predicted one.")
    method: Literal["integrated_gradients", "occlusion"] = "integrated_gradients"
    steps: int = Field(32, ge=1, le=EXPLAIN_MAX_WORK, description="Integration steps (integrated "
                       f"gradients); steps x words is at most {EXPLAIN_MAX_WORK}.")


class Contribution(BaseModel):
    """One word and its share of the label's log-probability."""

    text: str
    start: int
    end: int
    contribution: float
    without: str | None = Field(None, description="Occlusion: the label without this word.")


class ExplainResponse(BaseModel):
    """The label scores, and each word's contribution to the explained label."""

    model: str
    label: str
    method: str
    scores: list[LabelScore]
    log_prob: float = Field(description="log p(label | text), which the contributions explain.")
    baseline_log_prob: float | None = Field(
        None, description="Integrated gradients: log p(label) with every word's embedding at "
        "zero; the contributions add up to log_prob minus this.")
    words: list[Contribution]
    truncated: bool
