"""How a process proves who it is to the grid's NATS: a `.creds` file (and, with TLS, a CA and a client
certificate), from explicit options, else SPACEGRID_* environment variables, else the data dir of a local grid.
Holds paths only: secrets stay in their 0600 files and never reach process arguments, grid.json or logs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from spacegrid.errors import ConfigError
from spacegrid.security import jwt
from spacegrid.security.roles import inbox_prefix
from spacegrid.security.secrets import SECRETS_DIR, TLS_DIR, read_secret
from spacegrid.security.tls import CA_FILE

ENV_CREDS = "SPACEGRID_CREDS"
ENV_TLS_CA = "SPACEGRID_TLS_CA"
ENV_TLS_CERT = "SPACEGRID_TLS_CERT"
ENV_TLS_KEY = "SPACEGRID_TLS_KEY"


@dataclass(frozen=True, slots=True)
class Access:
    """The credential and TLS files a connection uses; all None: an unauthenticated, plain connection."""

    creds_path: Path | None = None
    tls_ca_path: Path | None = None
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None

    @property
    def anonymous(self) -> bool:
        return self.creds_path is None

    def inbox_prefix(self) -> str | None:
        """Where this identity's replies arrive (its own, by its subscribe permission); None without creds."""
        if self.creds_path is None:
            return None
        subject = jwt.decode_claims(jwt.jwt_of_creds(self.read_creds())).get("sub")
        if not isinstance(subject, str) or not subject.startswith("U"):
            raise ConfigError(f"{self.creds_path} holds no NATS user credential; use a .creds file of the grid")
        return inbox_prefix(subject)

    def read_creds(self) -> str:
        assert self.creds_path is not None
        return read_secret(self.creds_path, "credentials file")

    def describe(self) -> str:
        """For messages: which files, never their contents."""
        if self.creds_path is None:
            return "no credentials"
        return f"credentials {self.creds_path}" + (f", TLS CA {self.tls_ca_path}" if self.tls_ca_path else "")

    def over(self, fallback: Access) -> Access:
        """These settings, each missing one taken from `fallback`."""
        return Access(self.creds_path or fallback.creds_path, self.tls_ca_path or fallback.tls_ca_path,
                      self.tls_cert_path or fallback.tls_cert_path, self.tls_key_path or fallback.tls_key_path)

    def given(self) -> list[tuple[str, str, Path]]:
        """(command option, SPACEGRID_* variable, absolute path) of each file set: how a child process gets them."""
        fields = (("--creds", ENV_CREDS, self.creds_path), ("--tls-ca", ENV_TLS_CA, self.tls_ca_path),
                  ("--tls-cert", ENV_TLS_CERT, self.tls_cert_path), ("--tls-key", ENV_TLS_KEY, self.tls_key_path))
        return [(option, env, path.resolve()) for option, env, path in fields if path is not None]

    def environment(self) -> dict[str, str]:
        """SPACEGRID_* variables that give a child process these files (paths only)."""
        return {env: str(path) for _, env, path in self.given()}

    def arguments(self) -> list[str]:
        """Command options that give a child process these files (paths only)."""
        return [arg for option, _, path in self.given() for arg in (option, str(path))]

    def with_creds(self, creds_path: Path) -> Access:
        return replace(self, creds_path=creds_path)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Access:
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name) else None

        return cls(path(ENV_CREDS), path(ENV_TLS_CA), path(ENV_TLS_CERT), path(ENV_TLS_KEY))

    @classmethod
    def of_data_dir(cls, data_dir: Path, role: str = "admin") -> Access:
        """A local grid's credential for `role` (DATA_DIR/secrets/<role>.creds) and the CA of its servers'
        certificates (DATA_DIR/secrets/tls/ca.pem), where the grid made them."""
        creds, ca = data_dir / SECRETS_DIR / f"{role}.creds", data_dir / SECRETS_DIR / TLS_DIR / CA_FILE
        return cls(creds if creds.exists() else None, ca if ca.exists() else None)

    @classmethod
    def resolve(cls, explicit: Access | None = None, data_dir: Path | None = None, role: str = "admin") -> Access:
        """Explicit options first, then SPACEGRID_* variables, then the data dir's credential for `role`."""
        found = (explicit or cls()).over(cls.from_env())
        if data_dir is not None:
            found = found.over(cls.of_data_dir(data_dir, role))
        return found
