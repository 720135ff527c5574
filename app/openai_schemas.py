"""Request models of the OpenAI-compatible routes (/v1/completions, /v1/chat/completions).

Every field OpenAI defines for these calls is either implemented or refused by name unless
it is at its neutral value; unknown fields are refused too, so nothing is silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    WithJsonSchema,
    model_validator,
)

from app.schemas import AS_JSON_INT, MAX_STOPS, STOP_MAX_CHARS, Text

__all__ = ["MAX_N", "ChatMessage", "ChatRequest", "CompletionRequest", "StreamOptions"]

MAX_N = 8
MAX_LOGPROBS = 5


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        # The openai SDK and wrappers around it send null for an optional field they were
        # not given: null means "the default" for every optional field, as OpenAI reads it.
        if isinstance(data, dict):
            return {k: v for k, v in data.items()
                    if v is not None or k not in cls.model_fields
                    or cls.model_fields[k].is_required()}
        return data


StopText = Annotated[str, Field(min_length=1, max_length=STOP_MAX_CHARS)]
_STOP_TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": STOP_MAX_CHARS}
# OpenAI's `stop` is a string or a list of them; one string is read as a list of one, so that
# an error names `stop` or `stop.N` and its limit, not a branch of a union.
Stops = Annotated[
    list[StopText], Field(max_length=MAX_STOPS),
    BeforeValidator(lambda value: [value] if isinstance(value, str) else value),
    WithJsonSchema({"anyOf": [_STOP_TEXT_SCHEMA, {"type": "array", "items": _STOP_TEXT_SCHEMA,
                                                  "maxItems": MAX_STOPS}]})]


class StreamOptions(_Strict):
    """OpenAI's stream_options."""

    include_usage: StrictBool = False


class _Sampling(_Strict):
    """The sampling fields both OpenAI calls share."""

    model: str = Field(..., max_length=128, examples=["shakespeare"],
                       description="A generation model's name; any other name (`tgi`, "
                       "`dummy`, ...) is answered by the default generation model, as TGI does.")
    max_tokens: Annotated[int, Field(ge=1), AS_JSON_INT] | None = Field(
        None, description="Tokens to generate at most.")
    temperature: StrictFloat | None = Field(None, ge=0, le=2, allow_inf_nan=False,
                                      description="0 is greedy; default 1.")
    top_p: StrictFloat | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: Annotated[int, Field(ge=1, le=MAX_N), AS_JSON_INT] = Field(
        1, description="Choices per prompt (seeds seed, seed+1, ...).")
    stop: Stops | None = Field(None, description="Up to 16 stop sequences; the text ends "
                                                 "before the one that hit.")
    seed: Annotated[int, Field(ge=0, le=2**53), AS_JSON_INT] | None = Field(None)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: StrictFloat | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: StrictFloat | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = Field(None, max_length=0,
                                                description="Not supported: null or {} only.")
    user: str | None = Field(None, max_length=256, description="Accepted; not used.")

    def stops(self) -> list[str]:
        """The stop sequences as a list."""
        return list(self.stop or [])


class CompletionRequest(_Sampling):
    """OpenAI's /v1/completions body."""

    prompt: Text | list[Text] = Field(..., examples=["ROMEO:"])
    echo: StrictBool = Field(False, description="Prepend the prompt to each choice's text.")
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS), AS_JSON_INT] | None = Field(
        None, description="Logprobs of each token and this many alternatives.")
    best_of: Literal[1] | None = Field(None, description="Not supported: null or 1 only.")
    suffix: Literal[""] | None = Field(None, description="Not supported: null or \"\" only.")

class TextPart(_Strict):
    """A text part of a message's content."""

    type: Literal["text"]
    text: Text


class TextFormat(_Strict):
    """The only response_format served: plain text."""

    type: Literal["text"]


class ChatMessage(_Strict):
    """One message of a conversation (tool calls are not supported)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: str | None = Field(None, max_length=64, description="The speaker's name.")

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    """OpenAI's /v1/chat/completions body."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1), AS_JSON_INT] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS), AS_JSON_INT] | None = None
    tools: list[Any] | None = Field(None, max_length=0, description="Not supported: null or [].")
    tool_choice: Literal["none"] | None = Field(None, description="Not supported: null or none.")
    response_format: TextFormat | None = None
    parallel_tool_calls: StrictBool | None = None
