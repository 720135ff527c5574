"""The per-request limits that come from settings, each checked in one place and named in its
error (the field, the value, the limit and the setting that sets it)."""

from __future__ import annotations

from app.errors import InvalidInput
from app.settings import Settings

__all__ = ["check_chars", "new_tokens", "request_chars", "request_cost"]


def check_chars(text: str, settings: Settings, field: str) -> None:
    """`InvalidInput` naming `field` when the text is over RNN_MAX_INPUT_CHARS."""
    if len(text) > settings.max_input_chars:
        raise InvalidInput(f"{field} has {len(text)} characters; the limit is "
                           f"{settings.max_input_chars} (RNN_MAX_INPUT_CHARS)", param=field)


def new_tokens(settings: Settings, wanted: int | None, default: int, field: str) -> int:
    """Tokens to generate: `wanted`, or `default` lowered to the limit; within RNN_MAX_NEW_TOKENS."""
    tokens = min(default, settings.max_new_tokens) if wanted is None else wanted
    if tokens > settings.max_new_tokens:
        raise InvalidInput(f"{field} is {tokens}; the limit is {settings.max_new_tokens} "
                           "(RNN_MAX_NEW_TOKENS)", param=field)
    return tokens


def request_cost(settings: Settings, prompts: int, choices: int, tokens: int, field: str) -> None:
    """`InvalidInput` when prompts x choices x tokens is over RNN_MAX_REQUEST_TOKENS: what one
    request may make the service generate."""
    cost = prompts * choices * tokens
    if cost > settings.max_request_tokens:
        raise InvalidInput(
            f"this request asks for {prompts} prompt(s) x {choices} choice(s) x {tokens} "
            f"tokens = {cost} tokens; the budget per request is {settings.max_request_tokens} "
            f"(RNN_MAX_REQUEST_TOKENS): send fewer prompts or choices, or a smaller {field}",
            param=field)


def request_chars(settings: Settings, texts: list[str], field: str) -> None:
    """`InvalidInput` when the texts of a /classify or /score request have more characters
    in all than RNN_MAX_REQUEST_CHARS."""
    total = sum(len(t) for t in texts)
    if total > settings.max_request_chars:
        raise InvalidInput(
            f"{field} holds {total} characters in all; the budget per request is "
            f"{settings.max_request_chars} (RNN_MAX_REQUEST_CHARS): send the texts in several "
            "requests", param=field)
