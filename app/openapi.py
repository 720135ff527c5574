"""The OpenAPI schema, completed with the error answers and the limits of these settings.

Limits that come from settings (texts per request, characters per text, max_new_tokens) are
written into the schema, so what the docs call valid is what the server accepts.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.schemas import NEUTRAL_TGI, STOP_MAX_CHARS
from app.settings import Settings

__all__ = ["install_openapi"]

_ERROR = {"type": "object", "required": ["detail"], "properties": {"detail": {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    "error": {"type": "string"}, "error_type": {"type": "string"}}}
_OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"]}}}
_ANSWERS = {
    "401": "API key missing or wrong (when RNN_API_KEYS is set)",
    "404": "No such model; the message lists the available ones",
    "413": "Body over RNN_MAX_BODY_BYTES",
    "422": "Invalid input; the message names the field and the limit",
    "503": "Queue full, model failed to load, or shutting down (see Retry-After)",
    "504": "Waited past RNN_REQUEST_TIMEOUT_S",
}
_ADMIN_ANSWERS = {  # the admin routes (served only with RNN_ADMIN_KEYS) take an admin key
    "401": "Admin key missing or wrong (RNN_ADMIN_KEYS)",
    "403": "An inference key (RNN_API_KEYS) on an admin route",
}
_BODY_ANSWERS = {  # every operation that takes a JSON body
    "400": "Body is not UTF-8, or not JSON",
    "408": "Body not received within RNN_BODY_TIMEOUT_S; the connection is closed",
    "415": "Body sent without 'Content-Type: application/json'",
}
_SERVER_FAULT = {"500": "Server fault (never for client input); the body says nothing more, "
                        "the log has the traceback under the X-Request-Id"}
_GUARDED = ("/", "/classify", "/generate", "/generate_stream", "/score", "/models",
            "/models/{name}", "/admin/reload", "/tokenize")


def _texts_schema(s: Settings) -> dict[str, Any]:
    text = {"type": "string", "maxLength": s.max_input_chars}
    return {"anyOf": [text, {"type": "array", "items": text, "minItems": 1,
                             "maxItems": s.max_inputs}]}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace `app.openapi` with a generator that adds error answers and settings' limits."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
        schemas = spec["components"]["schemas"]
        schemas["ErrorResponse"] = _ERROR
        for name in ("ClassifyRequest", "ScoreRequest"):
            schemas[name]["properties"]["inputs"] |= _texts_schema(settings)
            schemas[name]["properties"]["inputs"].pop("type", None)
        schemas["GenerateRequest"]["properties"]["inputs"]["maxLength"] = settings.max_input_chars
        prompt = schemas["CompletionRequest"]["properties"]["prompt"]
        prompt |= _texts_schema(settings)
        prompt.pop("type", None)
        for choice in prompt["anyOf"]:  # an empty prompt has nothing to continue
            (choice.get("items") or choice)["minLength"] = 1
        schemas["TokenizeRequest"]["properties"]["inputs"]["maxLength"] = settings.max_input_chars
        for name, field in (("CompletionRequest", "max_tokens"), ("ChatRequest", "max_tokens"),
                            ("ChatRequest", "max_completion_tokens")):
            for choice in schemas[name]["properties"][field].get("anyOf", []):
                if choice.get("type") == "integer":  # the route refuses more (RNN_MAX_NEW_TOKENS)
                    choice["maximum"] = settings.max_new_tokens
        params = schemas["GenerateParameters"]["properties"]
        params["max_new_tokens"]["maximum"] = settings.max_new_tokens
        # As the route does: the model's default, capped at the configured limit.
        params["max_new_tokens"]["default"] = min(params["max_new_tokens"]["default"],
                                                  settings.max_new_tokens)
        params["stop"]["items"] = {"type": "string", "minLength": 1, "maxLength": STOP_MAX_CHARS}
        for name, allowed in NEUTRAL_TGI.items():  # accepted at their neutral values only
            values = [v for v in allowed if v is not None]
            params[name] = {"anyOf": [{"type": "null"}] + ([{"enum": values}] if values else []),
                            "description": "TGI parameter refused unless at its neutral value."}
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                answers = dict(_SERVER_FAULT)
                if path in _GUARDED:
                    answers |= _ANSWERS | (_ADMIN_ANSWERS if path.startswith("/admin/") else {})
                if method == "post":
                    answers |= _BODY_ANSWERS
                schema: dict[str, Any] = {"$ref": "#/components/schemas/ErrorResponse"}
                if path.startswith("/v1/"):  # OpenAI's error shape, or the framework's own
                    schema = {"anyOf": [schema, _OPENAI_ERROR]}
                for code, description in answers.items():
                    own = operation["responses"].get(code, {}).get("description")
                    operation["responses"][code] = {
                        "description": own or description,
                        "content": {"application/json": {"schema": schema}}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
