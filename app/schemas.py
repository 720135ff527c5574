"""Request and response models, in the shapes of Hugging Face text-classification and
text-generation-inference (TGI), with limits and examples for the OpenAPI page."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
)

from app.generation.messages import Sampling
from app.limits import new_tokens
from app.settings import Settings

__all__ = [
    "AS_JSON_INT",
    "MAX_STOPS",
    "NEUTRAL_TGI",
    "STOP_MAX_CHARS",
    "BestOfSequence",
    "ClassifyParameters",
    "ClassifyRequest",
    "GenerateDetails",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "InputToken",
    "JsonInt",
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

STOP_MAX_CHARS = 64  # characters per stop sequence
MAX_STOPS = 16  # stop sequences per request


def _json_int(value: Any) -> Any:
    """A JSON integer: an int, or a float with no fraction (JSON Schema's `integer` admits
    3.0); never a string or a boolean, which lax pydantic would convert."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


AS_JSON_INT = BeforeValidator(_json_int)
JsonInt = Annotated[int, AS_JSON_INT]
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
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="As in Hugging Face text-classification: `softmax` (default) over the "
        "labels, `sigmoid` of each label's logit, or `none` (the raw logits).")


class ClassifyRequest(_Strict):
    """One text or a list of texts to classify."""

    inputs: Texts = Field(..., description="A text or a list of texts.",
                                    examples=[["a gripping, beautiful film", "dull and lifeless"]])
    model: str | None = ModelName
    parameters: ClassifyParameters = Field(default_factory=ClassifyParameters)


class LabelScore(BaseModel):
    """A label and its probability."""

    label: str = Field(examples=["positive"])
    score: float = Field(examples=[0.97], description="A probability (softmax, sigmoid), or the "
                         "raw logit with function_to_apply none.")


# TGI parameters refused unless at their neutral values: they have no meaning here.
NEUTRAL_TGI: dict[str, tuple[Any, ...]] = {
    "watermark": (None, False), "grammar": (None,), "adapter_id": (None,),
}
MAX_BEST_OF = 8
MAX_TOP_N_TOKENS = 5  # TGI's default --max-top-n-tokens


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
    stop: list[Text] = Field(default_factory=list, max_length=MAX_STOPS,
                             description="Stop sequences; the text ends with the one that hit.")
    details: bool = Field(False, description="Return finish reason, seed and tokens.")
    typical_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False,
                                    description="Locally typical sampling: keep the tokens "
                                    "closest to the expected surprisal up to this mass.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False,
                                            description="Subtracted from a token's logit once "
                                            "per occurrence so far (prompt included).")
    top_n_tokens: Annotated[int, Field(ge=0, le=MAX_TOP_N_TOKENS), AS_JSON_INT] | None = Field(
        None, description="The n likeliest tokens at each step, in details.top_tokens and each "
        "stream event.")
    decoder_input_details: StrictBool = Field(False, description="details.prefill carries the "
                                              "prompt's tokens with their logprobs.")
    return_full_text: StrictBool | None = Field(None, description="Prepend the prompt to "
                                                "generated_text.")
    truncate: Annotated[int, Field(ge=1), AS_JSON_INT] | None = Field(
        None, description="Keep only the last N prompt tokens.")
    best_of: Annotated[int, Field(ge=1, le=MAX_BEST_OF), AS_JSON_INT] | None = Field(
        None, description="Sample n sequences (seeds seed, seed+1, ...), answer the one with "
        "the highest total logprob.")
    # TGI parameters refused unless at their neutral values (see NEUTRAL_TGI).
    watermark: bool | None = None
    grammar: Any | None = None
    adapter_id: str | None = None

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

    def samples(self) -> bool:
        """TGI's rule: sample when do_sample is true or any warper is set (a temperature other
        than 1, top_k other than 0, top_p or typical_p under 1); otherwise decode greedily."""
        warped = ((self.temperature is not None and self.temperature != 1.0) or bool(self.top_k)
                  or (self.top_p or 1.0) < 1 or (self.typical_p or 1.0) < 1)
        return bool(self.do_sample) or warped

    def to_sampling(self, settings: Settings) -> Sampling:
        """The one `Sampling` of this request, within the limits, with TGI's greedy rule
        applied (temperature 0 means greedy)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        if not self.samples():
            temperature = 0.0
        wanted = self.max_new_tokens if "max_new_tokens" in self.model_fields_set else None
        return Sampling(
            max_new_tokens=new_tokens(settings, wanted, self.max_new_tokens,
                                      "parameters.max_new_tokens"),
            temperature=temperature, top_k=self.top_k or 0, top_p=self.top_p or 1.0,
            repetition_penalty=self.repetition_penalty or 1.0, typical_p=self.typical_p or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0, stop=tuple(self.stop),
            top_n_tokens=self.top_n_tokens or 0)


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


class InputToken(BaseModel):
    """A prompt token; its logprob given the tokens before it (null for the first)."""

    id: int
    text: str
    logprob: float | None = None


class StreamDetails(BaseModel):
    """How generation went, on the last stream event."""

    finish_reason: Literal["length", "stop_sequence", "cancelled"]
    generated_tokens: int
    seed: int
    input_length: int = Field(0, description="Prompt tokens read (after truncate).")


class BestOfSequence(BaseModel):
    """One of the other `best_of` candidates."""

    generated_text: str
    finish_reason: Literal["length", "stop_sequence", "cancelled"]
    generated_tokens: int
    seed: int
    prefill: list[InputToken] = Field(default_factory=list)
    tokens: list[Token] = Field(default_factory=list)
    top_tokens: list[list[Token]] | None = None


class GenerateDetails(StreamDetails):
    """How generation went, with every token (when `details` is asked for)."""

    prefill: list[InputToken] = Field(default_factory=list, description="The prompt's tokens "
                                      "with `decoder_input_details`; else empty.")
    tokens: list[Token] = Field(default_factory=list)
    top_tokens: list[list[Token]] | None = Field(None, description="With `top_n_tokens`.")
    best_of_sequences: list[BestOfSequence] | None = Field(None, description="With `best_of`.")


class GenerateResponse(BaseModel):
    """The continuation of the prompt."""

    generated_text: str
    details: GenerateDetails | None = None


class StreamResponse(BaseModel):
    """One server-sent event of /generate_stream."""

    index: int
    token: Token
    top_tokens: list[Token] | None = None
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
