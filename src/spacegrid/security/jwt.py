"""NATS identities: nkey pairs and the JWTs (operator, account, user) of decentralized NATS auth (ADR 0010).

A JWT here is NATS's v2 format: base64url(header).base64url(claims).base64url(ed25519 signature of the first two
parts by the issuer's nkey). The server checks the signature chain (operator -> account -> user) and the user's
permissions; it holds no secret. Seeds (the private halves) only ever go to files of mode 0600 (`security.secrets`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys

from spacegrid.errors import ConfigError

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
UNLIMITED = -1

_PREFIXES = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
             "user": nkeys.PREFIX_BYTE_USER}


@dataclass(frozen=True, slots=True)
class Identity:
    """One nkey pair: `public_key` (O..., A... or U...) and its `seed` (S...), the secret."""

    kind: str
    seed: str

    @property
    def public_key(self) -> str:
        return str(nkeys.from_seed(bytearray(self.seed.encode())).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))

    @classmethod
    def generate(cls, kind: str) -> Identity:
        if kind not in _PREFIXES:
            raise ValueError(f"unknown nkey kind {kind!r}; one of {sorted(_PREFIXES)}")
        return cls(kind, nkeys.encode_seed(os.urandom(32), _PREFIXES[kind]).decode())

    @classmethod
    def from_seed(cls, kind: str, seed: str) -> Identity:
        identity = cls(kind, seed.strip())
        try:
            key = identity.public_key
        except Exception as exc:  # nkeys raises its own errors, and binascii's, for a damaged seed
            raise ConfigError(f"not a valid NATS {kind} seed ({exc}); restore it from a backup of DATA_DIR/secrets") \
                from exc
        if not key.startswith(kind[0].upper()):
            raise ConfigError(f"expected a NATS {kind} seed, got one for a key {key[:1]}...")
        return identity


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims_nats: dict[str, Any], subject: str, name: str, issuer: Identity,
           expires_at_s: int | None = None) -> str:
    """Sign a JWT whose `nats` section is `claims_nats` for `subject` (a public key), issued by `issuer`."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key, "name": name, "sub": subject}
    if expires_at_s is not None:
        claims["exp"] = int(expires_at_s)
    digest = hashlib.sha512(json.dumps(claims, sort_keys=True).encode()).digest()[:32]
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()  # an id, as NATS's tools make one
    claims["nats"] = {**claims_nats, "version": 2}
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the server verifies): for names, inbox prefixes and expiry in messages."""
    try:
        claims = json.loads(_b64_decode(token.split(".")[1]))
    except (IndexError, ValueError) as exc:
        raise ConfigError(f"not a NATS JWT ({exc})") from exc
    if not isinstance(claims, dict):
        raise ConfigError("not a NATS JWT (its claims are not an object)")
    return claims


def operator_jwt(operator: Identity, system_account: Identity, name: str) -> str:
    return encode({"type": "operator", "system_account": system_account.public_key}, operator.public_key, name,
                  operator)


def account_jwt(account: Identity, operator: Identity, name: str, jetstream: bool,
                revocations: dict[str, int] | None = None) -> str:
    """The account's JWT; `revocations` (user public key -> unix time): that user's JWTs issued at or before that
    time are refused, and its connections closed when the server loads the JWT."""
    limits: dict[str, Any] = {"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED, "imports": UNLIMITED,
                              "exports": UNLIMITED, "wildcards": True, "conn": UNLIMITED, "leaf": UNLIMITED}
    if jetstream:
        limits.update({"mem_storage": UNLIMITED, "disk_storage": UNLIMITED, "streams": UNLIMITED,
                       "consumer": UNLIMITED})
    claims: dict[str, Any] = {"type": "account", "limits": limits, "default_permissions": {"pub": {}, "sub": {}}}
    if revocations:
        claims["revocations"] = dict(sorted(revocations.items()))
    return encode(claims, account.public_key, name, operator)


@dataclass(frozen=True, slots=True)
class Permissions:
    """A user's subject permissions, as NATS enforces them: what it may publish and subscribe to, and how many
    replies it may send to requests it received (`responses_max`, within `responses_ttl_s`)."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    responses_max: int = 0
    responses_ttl_s: float = 0.0

    def claims(self) -> dict[str, Any]:
        pub: dict[str, Any] = {"allow": list(self.publish)}
        if self.publish_deny:
            pub["deny"] = list(self.publish_deny)
        claims: dict[str, Any] = {"pub": pub, "sub": {"allow": list(self.subscribe)}}
        if self.responses_max:
            claims["resp"] = {"max": self.responses_max, "ttl": int(self.responses_ttl_s * 1e9)}
        return claims


def user_jwt(user: Identity, account: Identity, name: str, permissions: Permissions,
             expires_at_s: int | None = None) -> str:
    nats = {"type": "user", "subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED, **permissions.claims()}
    return encode(nats, user.public_key, name, account, expires_at_s)


def creds_text(token: str, user: Identity) -> str:
    """A `.creds` file: the user's JWT and seed, in the layout every NATS client reads."""
    return ("-----BEGIN NATS USER JWT-----\n" f"{token}\n" "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n" f"{user.seed}\n" "------END USER NKEY SEED------\n")


def jwt_of_creds(text: str) -> str:
    """The user JWT inside a `.creds` file's text."""
    lines = [line.strip() for line in text.splitlines()]
    try:
        start = lines.index("-----BEGIN NATS USER JWT-----")
    except ValueError as exc:
        raise ConfigError("not a NATS .creds file (no user JWT block)") from exc
    if start + 1 >= len(lines) or not lines[start + 1]:
        raise ConfigError("not a NATS .creds file (an empty user JWT block)")
    return lines[start + 1]
