"""Request and response models, in the shapes of Hugging Face text-classification and
text-generation-inference (TGI), with limits and examples for the OpenAPI page."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "NEUTRAL_TGI",
    "STOP_MAX_CHARS",
    "ClassifyParameters",
    "ClassifyRequest",
    "GenerateDetails",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "LabelScore",
    "PrefillToken",
    "ScoreDetails",
    "ScoreParameters",
    "ScoreRequest",
    "ScoreResult",
    "StreamDetails",
    "StreamResponse",
    "Text",
    "Texts",
    "Token",
]

STOP_MAX_CHARS = 64
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ModelName = Field(None, pattern=MODEL_NAME, description="Model folder name; default: the task's "
                  "default model.", examples=["sentiment"])


def _valid_unicode(value: str, where: str = "text") -> str:
    # JSON may carry a lone surrogate ("\\ud800"), which no tokenizer, JSON encoder or log
    # line can take: refused here, per request, before it reaches a batch.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where} holds a lone surrogate U+{ord(value[e.start]):04X} at "
                         f"character {e.start}; send valid Unicode (a surrogate pair or the "
                         "character itself)") from None
    return value


def _valid_texts(value: str | list[str]) -> str | list[str]:
    """`inputs` (a text or a list of texts) checked by `_valid_unicode`, naming the index."""
    if isinstance(value, str):
        return _valid_unicode(value, "inputs")
    for i, text in enumerate(value):
        _valid_unicode(text, f"inputs[{i}]")
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
Texts = Annotated[str | list[str], AfterValidator(_valid_texts)]


class _Strict(BaseModel):
    # strict: "5", 5.0 and true are not integers, "0.8" and false are not numbers, 0 is not a
    # boolean, as TGI's own parser says: a client is never silently misunderstood. (A whole
    # model, so that every parameter added later holds the same contract.)
    model_config = ConfigDict(extra="forbid", strict=True)


class ClassifyParameters(_Strict):
    """Options of /classify."""

    top_k: int | None = Field(None, ge=1, le=1000, description="Return only the best k labels.")
    function_to_apply: Literal["softmax", "none"] | None = Field(
        None, description="Accepted for Hugging Face compatibility; scores are softmax.")


class ClassifyRequest(_Strict):
    """One text or a list of texts to classify."""

    inputs: Texts = Field(..., description="A text or a list of texts.",
                                    examples=[["a gripping, beautiful film", "dull and lifeless"]])
    model: str | None = ModelName
    parameters: ClassifyParameters = Field(default_factory=ClassifyParameters)


class LabelScore(BaseModel):
    """A label and its probability."""

    label: str = Field(examples=["positive"])
    score: float = Field(ge=0, le=1, examples=[0.97])


NEUTRAL_TGI: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1), "truncate": (None,), "watermark": (None, False), "grammar": (None,),
    "decoder_input_details": (None, False), "top_n_tokens": (None, 0), "typical_p": (None, 1.0),
    "frequency_penalty": (None, 0.0), "adapter_id": (None,), "return_full_text": (None, False),
}


class GenerateParameters(_Strict):
    """Sampling parameters, named as in TGI."""

    max_new_tokens: int = Field(100, ge=1, description="Characters to generate at most.")
    temperature: float | None = Field(None, ge=0, le=100, allow_inf_nan=False,
                                      description="0 means greedy.")
    top_k: int | None = Field(None, ge=0, le=100_000, description="Keep the k likeliest.")
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False,
                                description="Keep the smallest set with this much mass.")
    repetition_penalty: float | None = Field(None, gt=0, le=100, allow_inf_nan=False,
                                             description="Above 1 discourages repeats.")
    do_sample: bool | None = Field(None, description="Sample; default: when a warper is set.")
    # 2**53: the largest integer every JSON client (and JSON Schema checker) holds exactly.
    seed: int | None = Field(None, ge=0, le=2**53, description="Same seed, same text.")
    stop: list[Text] = Field(default_factory=list, max_length=16,
                             description="Stop sequences; the text ends with the one that hit.")
    details: bool = Field(False, description="Return finish reason, seed and tokens.")
    # TGI parameters we accept only at their neutral values (see NEUTRAL_TGI).
    best_of: int | None = None
    truncate: int | None = None
    watermark: bool | None = None
    grammar: Any | None = None
    decoder_input_details: bool | None = None
    top_n_tokens: int | None = None
    typical_p: float | None = None
    frequency_penalty: float | None = None
    adapter_id: str | None = None
    return_full_text: bool | None = None

    @field_validator(*NEUTRAL_TGI)
    @classmethod
    def _neutral_only(cls, value: Any, info: Any) -> Any:
        allowed = NEUTRAL_TGI[info.field_name]
        if value not in allowed or (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"{info.field_name} is not supported by this server; leave it out "
                             f"or send {' or '.join(map(repr, allowed))}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_lengths(cls, value: list[str]) -> list[str]:
        for s in value:
            if not 1 <= len(s) <= STOP_MAX_CHARS:
                raise ValueError(f"each stop sequence must have 1 to {STOP_MAX_CHARS} characters")
        return value

    def sampling(self) -> tuple[float, int, float, float]:
        """(temperature, top_k, top_p, repetition_penalty) with TGI's greedy rule applied.

        Greedy (temperature 0) when temperature is 0, when do_sample is false, or when
        do_sample is unset and no warper (temperature, top_k, top_p) is given.
        """
        temperature = 1.0 if self.temperature is None else self.temperature
        warped = self.temperature is not None or bool(self.top_k) or (self.top_p or 1.0) < 1
        sample = self.do_sample if self.do_sample is not None else warped
        if not sample:
            temperature = 0.0
        return temperature, self.top_k or 0, self.top_p or 1.0, self.repetition_penalty or 1.0


class GenerateRequest(_Strict):
    """A prompt and sampling parameters (TGI's /generate body)."""

    inputs: Text = Field(..., min_length=1, description="The prompt.", examples=["ROMEO:"])
    model: str | None = Field(None, pattern=MODEL_NAME, examples=["shakespeare"],
                              description="Model folder name; default: the default generator.")
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = Field(False, description="Answer as server-sent events.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "inputs": "ROMEO:", "parameters": {"max_new_tokens": 200, "temperature": 0.8,
                                           "top_k": 40, "seed": 7, "stop": ["\n\n"]}}]})


class Token(BaseModel):
    """A generated token."""

    id: int
    text: str
    logprob: float
    special: bool = False


class StreamDetails(BaseModel):
    """How generation went, on the last stream event."""

    finish_reason: Literal["length", "stop_sequence", "cancelled"]
    generated_tokens: int
    seed: int


class GenerateDetails(StreamDetails):
    """How generation went, with every token (when `details` is asked for)."""

    tokens: list[Token] = Field(default_factory=list)


class GenerateResponse(BaseModel):
    """The continuation of the prompt."""

    generated_text: str
    details: GenerateDetails | None = None


class StreamResponse(BaseModel):
    """One server-sent event of /generate_stream."""

    index: int
    token: Token
    generated_text: str | None = None
    details: StreamDetails | None = None


class ScoreParameters(_Strict):
    """Options of /score."""

    details: bool = Field(False, description="Also return every token of each text with its "
                          "log-probability given its prefix (as TGI's decoder_input_details).")


class ScoreRequest(_Strict):
    """Texts to score under a language model."""

    inputs: Texts = Field(..., examples=["To be, or not to be"])
    model: str | None = Field(None, pattern=MODEL_NAME, examples=["shakespeare"])
    parameters: ScoreParameters = Field(default_factory=ScoreParameters)


class PrefillToken(BaseModel):
    """A token of the input and its log-probability given the tokens before it."""

    id: int
    text: str = Field(description="The characters of the input this token covers.")
    logprob: float | None = Field(description="Natural log; null for the first token, which "
                                  "has no prefix to be predicted from.")


class ScoreDetails(BaseModel):
    """Every token of a scored text, in order."""

    tokens: list[PrefillToken]


class ScoreResult(BaseModel):
    """Log-probability of a text: every token after the first, given its prefix."""

    tokens: int = Field(description="Tokens scored (all but the first).")
    log_prob: float = Field(description="Sum of natural-log probabilities.")
    perplexity: float | None = Field(description="exp(-log_prob / tokens); null if none.")
    bits_per_char: float | None = Field(description="-log2 probability per token; null if none.")
    details: ScoreDetails | None = Field(None, description="Per-token log-probabilities, "
                                         "when `parameters.details` is true.")
