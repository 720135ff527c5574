"""Service settings, read from `RNN_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.keys import read_key_file

__all__ = ["Settings", "load_settings", "settings_table"]


class Settings(BaseSettings):
    """Every setting of the service; `RNN_<NAME>` in the environment overrides the default."""

    model_config = SettingsConfigDict(env_prefix="RNN_", extra="ignore")

    models_dir: Path = Field(Path("models"), description="Folder whose sub-folders are models.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    threads: int = Field(1, ge=1, le=256, description="Torch threads per inference worker.")
    max_batch_size: int = Field(64, ge=1, le=4096, description="Texts per forward pass.")
    max_wait_ms: float = Field(0.0, ge=0, le=10_000,
                               description="Extra wait for a fuller batch (0: none).")
    max_queue: int = Field(1024, ge=1, description=(
        "Waiting requests per model before 503; with API keys, one key holds half at most."))
    max_active_sequences: int = Field(64, ge=1, le=4096,
                                      description="Sequences generated together per model.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline for a request's wait.")
    max_inputs: int = Field(64, ge=1, description="Texts per request.")
    max_input_chars: int = Field(4000, ge=1, description="Characters per text.")
    max_new_tokens: int = Field(1024, ge=1, description="Largest max_new_tokens accepted.")
    max_request_tokens: int = Field(
        16384, ge=1, description="Budget of one generation request: prompts x choices "
        "(n, best_of) x max tokens. The default is a quarter of what 64 slots generate in "
        "1,024 steps, so one request cannot claim the service.")
    max_request_chars: int = Field(
        65_536, ge=1, description="Budget of one /classify or /score request: the characters "
        "of all its texts. Its work is read in pieces of at most RNN_MAX_BATCH_CHARS, taken in "
        "turn with other requests', so a long request delays a short one by one piece.")
    max_batch_chars: int = Field(
        8192, ge=1, description="Characters per classify or score batch (a longer text is "
        "a batch of its own): what one batch holds the model's thread for.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body.")
    max_header_bytes: int = Field(
        32_768, ge=1024, le=1 << 24, description="Largest request head (request line and "
        "headers); a larger one gets 431 and the connection is closed.")
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Time a connection has to send a complete request "
        "head, from its opening or its first byte; a partial head then gets 408, a silent "
        "connection is closed.")
    max_connections: int = Field(
        2048, ge=16, description="Open connections per server process; one more takes the "
        "place of the oldest with no request in flight, or gets 503 when all are busy.")
    send_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Longest wait for a client to take a write of its "
        "answer (a stream nobody reads); its request is then cancelled and the connection "
        "closed.")
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="Time from a request's headers to the end of its body; a body still "
                    "incomplete then gets 408 and the connection is closed (slow clients).")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False, description="Comma-separated bearer keys; empty: no auth.")
    api_keys_file: Path | None = Field(
        None, description="File of inference keys (a mounted Docker or Kubernetes secret), one "
                          "per line; blank lines and lines starting with # are skipped. Its keys "
                          "are added to RNN_API_KEYS. A missing, unreadable or empty file stops "
                          "the start.")
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False,
        description="Comma-separated bearer keys for the admin routes (POST /admin/reload); "
                    "empty: the admin routes are not served (404). An inference key gets 403 "
                    "there, and an admin key does not open the model routes. SIGHUP reloads "
                    "the models without any key.")
    admin_keys_file: Path | None = Field(
        None, description="File of admin keys, one per line, as RNN_API_KEYS_FILE; its keys are "
                          "added to RNN_ADMIN_KEYS.")
    protect_metrics: bool = Field(False, description="Require the API key on /metrics too.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated allowed CORS origins.")
    default_classifier: str | None = Field(None, description="Model for /classify by default.")
    default_generator: str | None = Field(None, description="Model for /generate by default.")
    log_format: Literal["text", "json"] = Field("text", description="text or json.")
    weights: Literal["float16", "float32"] = Field(
        "float16",
        description="How LSTM and GRU weights are stored for inference on the CPU: float16 "
                    "(fbgemm; the arithmetic and the outputs stay float32) or float32. "
                    "GPUs and vanilla RNN cells use float32.")
    generation_worker: Literal["auto", "thread", "process"] = Field(
        "auto",
        description="Where each language model's generation engine runs: a worker process "
                    "(started by a clean fork server, never forked from the server; no GIL "
                    "shared with the event loop; one torch thread; it ignores SIGINT and "
                    "SIGTERM and stops with the server), or a thread of the server. auto: the "
                    "process on the CPU (Linux), the thread on a GPU.")
    prefill_chunk: int = Field(
        128, ge=1, le=100_000,
        description="Prompt characters read per generation turn: a long prompt is read in "
                    "pieces between the steps of the running batch, so it delays running "
                    "streams by one piece's time.")
    stream_flush_ms: float = Field(
        20.0, ge=0, le=1000,
        description="Least time between two writes to one token stream after its first token: "
                    "the tokens generated meanwhile go out in one write, each still its own "
                    "event. Tokens in the middle of a generation leave the generation engine "
                    "at most every half of it; first and last tokens at once. 0 sends and "
                    "writes every token as it is generated.")
    gil_switch_ms: float = Field(
        0.05, gt=0, le=100,
        description="Python's thread switch interval (ms): how soon an inference thread gets "
                    "the GIL back from a busy event loop.")

    @field_validator("api_keys", "admin_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys_file", "admin_keys_file")
    @classmethod
    def _check_key_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_key_file(value)  # the error names the file here, with the setting
        return value

    @model_validator(mode="after")
    def _add_keys_from_files(self) -> Settings:
        # The union: a key given in the variable and in the file is one key.
        for field, path in (("api_keys", self.api_keys_file), ("admin_keys", self.admin_keys_file)):
            if path is not None:
                keys: list[str] = getattr(self, field)
                setattr(self, field, keys + [k for k in read_key_file(path) if k not in keys])
        return self

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N")


_SECRET = frozenset({"RNN_API_KEYS", "RNN_ADMIN_KEYS"})


def load_settings() -> Settings:
    """Settings from the environment; a bad value exits with one line per problem, naming
    the variable, the value and what is expected (no traceback)."""
    try:
        return Settings()
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = "RNN_" + str(err["loc"][0]).upper() if err["loc"] else "settings"
            # A key is never written out; nor is the whole input, which holds the keys.
            shown = "<hidden>" if name in _SECRET or not err["loc"] else repr(err.get("input"))
            lines.append(f"invalid setting {name}={shown}: {err['msg']}")
        sys.stderr.write("\n".join(lines) + "\n")
        raise SystemExit(2) from None


def settings_table() -> str:
    """The settings table of docs/configuration.md, made from the `Settings` fields."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(default)
        shown = "" if default is None or default == "" else f"`{default}`"
        rows.append(f"| `RNN_{name.upper()}` | {shown} | {info.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")
