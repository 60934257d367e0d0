"""Keep credentials out of logs, files and error messages.

A judge's URL may carry credentials (``https://user:key@host/v1``, ``...?api_key=...``), and a
recipe may hold a key where the *name* of an environment variable belongs
(``api_key_env: sk-...``). :func:`redact` masks both in a string or in a whole nested config
before it is written or printed; :func:`mask` shows a secret only by its first characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
# scheme://USERINFO@host: everything between "//" and the last "@" before the path.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/?#\s]*@", re.IGNORECASE)
# ?api_key=... / &token=... / &sig=...: query parameters whose name says they are secret.
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&][^=&#\s]*(?:key|token|secret|passw|pwd|auth|sig|credential)[^=&#\s]*=)"
    r"[^&#\s]*",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<scheme>\bBearer\s+)[A-Za-z0-9._~+/=-]{8,}")
# Config keys whose values are secrets themselves (``pad_token`` or ``max_tokens`` are not).
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:api_?key|access_token|auth_token|hf_token|secret|password|passwd)$|^token$",
    re.IGNORECASE,
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# UPPER_SNAKE with at least one underscore: how environment variables are named, and how keys
# (random letters and digits, or lowercase prefixes like "sk-", "ghp_") never look.
_CONVENTIONAL_ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


def redact(value: Any) -> Any:
    """``value`` with credentials masked: URL user-info, secret query parameters and
    ``Bearer`` tokens inside strings; in mappings also the values of secret-named keys
    (``api_key``, ``token``, ``password``, ...) and of ``*_env`` keys that hold something other
    than an ``UPPER_SNAKE`` variable name. Lists, tuples and mappings are copied; other values returned as is."""
    if isinstance(value, str):
        value = _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", value)
        value = _SECRET_QUERY.sub(rf"\g<name>{REDACTED}", value)
        return _BEARER.sub(rf"\g<scheme>{REDACTED}", value)
    if isinstance(value, Mapping):
        return {key: _redact_entry(str(key), item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    return value


def _redact_entry(key: str, value: Any) -> Any:
    if isinstance(value, str) and value:
        if _SECRET_KEY.search(key):
            return mask(value)
        if key.endswith("_env") and not _CONVENTIONAL_ENV_NAME.fullmatch(value):
            return mask(value)  # a name like JUDGE_KEY is kept; a key pasted in its place is not
    return redact(value)


def mask(secret: str) -> str:
    """A secret shown by its first few characters and its length: ``'sk-a…' (51 chars)``."""
    shown = secret[: min(4, len(secret) // 4)]
    return f"'{shown}…' ({len(secret)} chars)"


def is_env_name(value: str) -> bool:
    """Whether ``value`` can be the name of an environment variable (letters, digits, ``_``)."""
    return _ENV_NAME.fullmatch(value) is not None


def env_name_for_display(name: str) -> str:
    """An environment variable's name as it may be printed: itself when it reads as a name
    (``JUDGE_API_KEY``), masked otherwise, since it may be a key pasted in its place."""
    return repr(name) if _CONVENTIONAL_ENV_NAME.fullmatch(name) else mask(name)
