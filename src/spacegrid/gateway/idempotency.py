"""The Idempotency-Key header of a write over HTTP: the operation id the grid deduplicates retries by."""

from __future__ import annotations

import re
from typing import Final

from starlette.requests import Request

from spacegrid.errors import RequestError
from spacegrid.gateway.auth import Caller
from spacegrid.limits import GATEWAY_IDEMPOTENCY_KEY_CHARS_MAX

IDEMPOTENCY_KEY_PATTERN: Final = f"^[!-~]{{1,{GATEWAY_IDEMPOTENCY_KEY_CHARS_MAX}}}$"  # printable ASCII, no space
_VALID: Final = re.compile(IDEMPOTENCY_KEY_PATTERN)


def op_id_of(request: Request, caller: Caller) -> str | None:
    """The write's operation id from its Idempotency-Key header (None without one), scoped to the caller's token:
    another token's key never answers with this caller's result."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not _VALID.fullmatch(key):
        raise RequestError(f"Idempotency-Key is 1 to {GATEWAY_IDEMPOTENCY_KEY_CHARS_MAX} printable ASCII characters "
                           "without spaces (limits.GATEWAY_IDEMPOTENCY_KEY_CHARS_MAX), unique per operation")
    return f"http.{caller.token_id}.{key}"
