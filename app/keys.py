"""API keys: reading them from key files, and checking a request's bearer key against them.

Two sets of keys: inference keys (`RNN_API_KEYS`) open the model routes, admin keys
(`RNN_ADMIN_KEYS`) open the admin routes and nothing else. A key never appears in a log line,
an error message or an answer: messages name the file or the setting, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.types import Scope

__all__ = ["ADMIN_PREFIX", "ADMIN_SCOPE_KEY", "TENANT_SCOPE_KEY", "bearer_token", "is_admin_path",
           "matches_any", "read_key_file", "tenant_digest"]

ADMIN_PREFIX = "/admin"
# Set in the ASGI scope of a request whose admin key was checked.
ADMIN_SCOPE_KEY = "textrnn.admin"
# Set in the ASGI scope of a request whose inference key was checked: who sent it (a digest of
# the key, never the key), so that the engine shares its slots between keys.
TENANT_SCOPE_KEY = "textrnn.tenant"


def read_key_file(path: Path) -> list[str]:
    """The keys of a key file, one per line; blank lines and lines starting with # are skipped.
    A file that cannot be read, is not UTF-8 or holds no key is a ValueError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        # The codec's own message quotes a byte of the file: a byte of a key.
        raise ValueError(f"key file {path} is not UTF-8 text") from None
    except OSError as e:
        raise ValueError(f"cannot read key file {path}: {e.strerror or type(e).__name__}") from None
    keys = [line.strip() for line in text.splitlines()]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        # An empty secret must not turn the check off: that would open what it should close.
        raise ValueError(f"key file {path} holds no key (one key per line; blank lines and "
                         "lines starting with # are skipped)")
    return keys


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None without one."""
    given = b""
    for name, value in headers:
        if name == b"authorization":
            given = value
    scheme, _, token = given.decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def matches_any(token: str | None, keys: list[str]) -> bool:
    """Whether `token` is one of `keys`, compared with every key in constant time, so that
    timing tells nothing about any key."""
    given = (token or "").encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok and token is not None


def is_admin_path(scope: Scope) -> bool:
    """Whether the request is for an admin route: its path as the router sees it (the server's
    root path taken off, as Starlette does) is under /admin."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        path = path[len(root):]
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def tenant_digest(token: str | None) -> str:
    """A short name for the holder of a key (its digest's first hex digits), to tell keys
    apart in scheduling without keeping the key itself."""
    return "" if token is None else hashlib.sha256(token.encode()).hexdigest()[:16]
