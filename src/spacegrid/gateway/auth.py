"""The gateway's bearer tokens: one per HTTP caller, for a role (reader: reads; client: reads and writes), HMAC-signed
with the gateway key in DATA_DIR/secrets/gateway.key; verified without any state but that key.

    sgt1.<role>.<expires unix s, 0: never>.<token id>.<HMAC-SHA256 of the part before it, base64url>

The gateway itself talks to NATS with the client role's credential (ADR 0010): the reader restriction of an HTTP
caller is the gateway's to enforce, and it does so before anything is sent to the grid. Rotating the key
(`spacegrid auth token --rotate-key`) revokes every token issued with the old one once the gateway restarts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from spacegrid.errors import ConfigError, Forbidden, Unauthorized
from spacegrid.limits import GATEWAY_TOKEN_TTL_S_MAX
from spacegrid.security.secrets import SECRETS_DIR, read_secret, write_secret

TOKEN_PREFIX: Final = "sgt1"
KEY_FILE: Final = "gateway.key"
KEY_BYTES: Final = 32
TOKEN_CHARS_MAX: Final = 256  # an Authorization header longer than this is refused unread
HTTP_ROLES: Final = ("reader", "client")  # what a token may be for; "client" may write


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent an HTTP request: the role its token is for, and the token's id ("" without authentication)."""

    role: str
    token_id: str

    @property
    def may_write(self) -> bool:
        return self.role == "client"


ANONYMOUS_WRITER: Final = Caller("client", "")  # every caller of a gateway started with --no-auth


def key_path(data_dir: Path) -> Path:
    return data_dir / SECRETS_DIR / KEY_FILE


def ensure_key(path: Path, rotate: bool = False) -> bytes:
    """The gateway key in `path` (a 0600 file), made on first use (and anew with `rotate`)."""
    if rotate or not path.exists():
        write_secret(path, secrets.token_hex(KEY_BYTES) + "\n")
    return read_key(path)


def read_key(path: Path) -> bytes:
    """The key of an existing key file; ConfigError saying how to make one."""
    if not path.exists():
        raise ConfigError(f"no gateway key at {path}: mint a token first (`spacegrid auth token client "
                          f"--data-dir DIR`), which makes it, or give --token-key")
    text = read_secret(path, "gateway key").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path} is not a gateway key (hex); `spacegrid auth token --rotate-key` makes a new one") from None
    if len(key) < 16:
        raise ConfigError(f"{path} holds a key of {len(key)} bytes; at least 16 are needed")
    return key


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint_token(key: bytes, role: str, ttl_s: float, now_s: float) -> str:
    """A new bearer token for `role`, valid `ttl_s` seconds from `now_s` (0: no expiry)."""
    if role not in HTTP_ROLES:
        raise ConfigError(f"a gateway token is for one of {', '.join(HTTP_ROLES)}, not {role!r}")
    if not 0 <= ttl_s <= GATEWAY_TOKEN_TTL_S_MAX:
        raise ConfigError(f"a token's lifetime is 0 (no expiry) to {GATEWAY_TOKEN_TTL_S_MAX:g} s, not {ttl_s:g}")
    expires_s = int(now_s + ttl_s) if ttl_s else 0
    body = f"{TOKEN_PREFIX}.{role}.{expires_s}.{secrets.token_hex(8)}"
    return f"{body}.{_mac(key, body)}"


class TokenVerifier:
    """Checks Authorization headers against one key; holds no other state."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def caller(self, authorization: str | None, now_s: float) -> Caller:
        """The caller a header proves, or Unauthorized saying what is wrong (never echoing the token)."""
        if not authorization:
            raise Unauthorized("no bearer token: send `Authorization: Bearer <token>` (`spacegrid auth token ROLE`)")
        if len(authorization) > TOKEN_CHARS_MAX:
            raise Unauthorized(f"the Authorization header is over {TOKEN_CHARS_MAX} characters: not a gateway token")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header is not `Bearer <token>`")
        parts = token.strip().split(".")
        if len(parts) != 5 or parts[0] != TOKEN_PREFIX:
            raise Unauthorized("not a gateway token (they start with sgt1.)")
        body, mac = ".".join(parts[:4]), parts[4]
        if not hmac.compare_digest(_mac(self._key, body).encode("ascii"), mac.encode("ascii", "replace")):
            raise Unauthorized("the token was not issued with this gateway's key (or was revoked by rotating it)")
        _, role, expires, token_id = parts[:4]
        if role not in HTTP_ROLES or not expires.isdigit():
            raise Unauthorized("the token names no role of the gateway")
        if int(expires) and now_s >= int(expires):
            raise Unauthorized("the token has expired: mint a new one with `spacegrid auth token ROLE`")
        return Caller(role, token_id)


def require_write(caller: Caller, what: str) -> None:
    """Forbidden unless the caller's role may write."""
    if not caller.may_write:
        raise Forbidden(f"{what} writes: the {caller.role} role may only read; use a client token")
