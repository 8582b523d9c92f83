"""A grid's secrets in its data dir: the NATS operator, system and account keys, the role credentials minted from
them, and the files that hold them (a 0700 directory, 0600 files, written atomically; ADR 0010).

    DATA_DIR/secrets/operator.nk, system.nk, account.nk   the seeds (only `spacegrid up` reads them)
    DATA_DIR/secrets/{admin,reader,client}.creds         one credential per role, for the grid's space
    DATA_DIR/secrets/pu/<member>.creds                    one per PU incarnation, minted when it starts
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

from spacegrid.errors import ConfigError
from spacegrid.security import jwt, roles
from spacegrid.security.jwt import Identity

SECRETS_DIR = "secrets"
REVOCATIONS_FILE = "revocations.json"  # user public key -> unix time: credentials issued until then are refused
TLS_DIR = "tls"  # DATA_DIR/secrets/tls: the grid's private CA and its servers' certificates
OPERATOR_NAME = "spacegrid"
APP_ACCOUNT_NAME = "spacegrid"
SYSTEM_ACCOUNT_NAME = "SYS"


def new_member_id(tag: str) -> str:
    """A new PU incarnation's member id: `<host>-<tag>-<random>`, one subject token (no dots, no wildcards)."""
    return f"{socket.gethostname().split('.')[0][:16]}-{tag}-{secrets.token_hex(3)}"


def write_secret(path: Path, text: str) -> Path:
    """Write `text` to `path`, mode 0600 from its creation on, replacing any older file atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def read_secret(path: Path, what: str) -> str:
    """A secret file's text; ConfigError if it can't be read or other users may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"can't read the {what} {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the {what} {path} is open to other users (mode {stat.S_IMODE(mode):o}): `chmod 600 {path}`")
    return text


def secure_directory(path: Path) -> Path:
    """Create `path` (and parents) as needed and make it 0700: the data dir holds every value and every secret."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class GridSecrets:
    """The keys of one grid (operator, system account, the grid's account) and the credentials minted from them."""

    def __init__(self, directory: Path, space: str, operator: Identity, system: Identity, account: Identity) -> None:
        self.directory = directory
        self.space = space
        self.operator = operator
        self.system = system
        self.account = account

    @classmethod
    def ensure(cls, data_dir: Path, space: str) -> GridSecrets:
        """The grid's keys, generated on first use into DATA_DIR/secrets; the same keys on every later start."""
        directory = secure_directory(secure_directory(data_dir) / SECRETS_DIR)
        keys = []
        for kind, name in (("operator", "operator"), ("account", "system"), ("account", "account")):
            path = directory / f"{name}.nk"
            if path.exists():
                keys.append(Identity.from_seed(kind, read_secret(path, f"{name} key")))
            else:
                identity = Identity.generate(kind)
                write_secret(path, identity.seed + "\n")
                keys.append(identity)
        return cls(directory, space, *keys)

    def trust_settings(self) -> dict[str, Any]:
        """What makes nats-server trust this grid, as a mapping (its configuration and the NATS Helm chart's
        `config.merge` both take it): the operator, the system account, both accounts' JWTs preloaded
        (`resolver: MEMORY`; the grid account's with the revocations in force). Public JWTs, no secret."""
        operator = jwt.operator_jwt(self.operator, self.system, OPERATOR_NAME)
        system = jwt.account_jwt(self.system, self.operator, SYSTEM_ACCOUNT_NAME, jetstream=False)
        return {"operator": operator, "system_account": self.system.public_key, "resolver": "MEMORY",
                "resolver_preload": {self.system.public_key: system, self.account.public_key: self._account_jwt()}}

    def server_config(self) -> list[str]:
        """nats-server configuration lines: trust this operator, preload the two accounts (JWTs, no secrets)."""
        settings = self.trust_settings()
        return [f'operator: "{settings["operator"]}"', f'system_account: "{settings["system_account"]}"',
                f'resolver: {settings["resolver"]}', "resolver_preload: {",
                *(f'  {key}: "{value}"' for key, value in settings["resolver_preload"].items()), "}"]

    def account_preload_line(self) -> str:
        """The grid account's line of `resolver_preload`: its JWT, with the revocations in force."""
        return f'  {self.account.public_key}: "{self._account_jwt()}"'

    def _account_jwt(self) -> str:
        return jwt.account_jwt(self.account, self.operator, APP_ACCOUNT_NAME, jetstream=True,
                               revocations=self.revocations())

    def revocations(self) -> dict[str, int]:
        path = self.directory / REVOCATIONS_FILE
        if not path.exists():
            return {}
        try:
            found = json.loads(read_secret(path, "revocations file"))
        except ValueError as exc:
            raise ConfigError(f"{path} is not JSON ({exc}); restore it from a backup, or remove it to revoke nothing")
        return {str(key): int(at) for key, at in dict(found).items()}

    def revoke(self, creds_text: str, at_s: int) -> str:
        """Refuse the user of a `.creds` file from now on (its JWTs issued until `at_s`); returns its public key.
        Running servers learn it when their configuration is reloaded (`reload_servers`)."""
        claims = jwt.decode_claims(jwt.jwt_of_creds(creds_text))
        if claims.get("iss") != self.account.public_key:
            raise ConfigError("that credential was not issued by this grid's account: nothing to revoke here")
        user = str(claims["sub"])
        write_secret(self.directory / REVOCATIONS_FILE, json.dumps({**self.revocations(), user: at_s}, indent=2))
        return user

    def mint(self, role: str, member_id: str | None = None) -> str:
        """A new `.creds` text for `role` in this grid's space (a PU's for `member_id`)."""
        return mint(self.account, self.space, role, member_id)

    def role_creds(self, role: str) -> Path:
        """DATA_DIR/secrets/<role>.creds for this space: minted on first use, again if it was for another space."""
        path = self.directory / f"{role}.creds"
        if path.exists():
            claims = jwt.decode_claims(jwt.jwt_of_creds(read_secret(path, f"{role} credentials")))
            wanted = roles.permissions(role, self.space, str(claims.get("sub", ""))).claims()
            held = {k: v for k, v in dict(claims.get("nats", {})).items() if k in wanted}
            if (claims.get("name") == f"{role}@{self.space}" and claims.get("iss") == self.account.public_key
                    and held == wanted and claims.get("sub") not in self.revocations()):  # this grid's, this
                return path  # space's, not revoked, and with the permissions of this version
        return write_secret(path, self.mint(role))

    def pu_creds(self, member_id: str) -> Path:
        """A credential for one PU incarnation, DATA_DIR/secrets/pu/<member>.creds."""
        return write_secret(self.directory / "pu" / f"{member_id}.creds", self.mint("pu", member_id))

    def discard_pu_creds(self, member_id: str) -> None:
        (self.directory / "pu" / f"{member_id}.creds").unlink(missing_ok=True)


def mint(account: Identity, space: str, role: str, member_id: str | None = None) -> str:
    """A new `.creds` text for `role` in `space`, signed by the grid's `account` key (a PU's names `member_id`):
    all a credential needs is the account key, so a Kubernetes init container holding only that mints one."""
    user = Identity.generate("user")
    name = f"pu:{member_id}@{space}" if role == "pu" else f"{role}@{space}"
    permissions = roles.permissions(role, space, user.public_key, member_id)
    return jwt.creds_text(jwt.user_jwt(user, account, name, permissions), user)


def member_of_creds(text: str) -> str | None:
    """The member id a PU credential was minted for (its name `pu:<member>@<space>`); None for other roles."""
    name = str(jwt.decode_claims(jwt.jwt_of_creds(text)).get("name", ""))
    if not name.startswith("pu:") or "@" not in name:
        return None
    return name[3:name.rindex("@")]
