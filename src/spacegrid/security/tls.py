"""A private certificate authority for a local grid, the certificates it issues, and the client ssl contexts over them.

One directory holds them as PEM: ca.pem + ca-key.pem, and <name>.pem + <name>-key.pem per certificate; keys are EC
P-256, written atomically with mode 0600, the directory created 0700, calls on it serialized by a lock file in it.
nats-server does TLS itself from these files (routes use a server certificate both ways). No network here."""

from __future__ import annotations

import json
import datetime as dt
import fcntl
import ipaddress
import os
import re
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spacegrid.errors import ConfigError

CA_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca-key.pem"
LOCK_FILE: Final = ".tls.lock"
DEFAULT_CA_NAME: Final = "spacegrid local CA"
DEFAULT_HOSTS: Final = ("127.0.0.1", "localhost", "::1")
CA_VALID_DAYS: Final = 3650
VALID_DAYS_MAX: Final = 825  # the longest server certificate lifetime that strict clients (Apple's) accept
RENEW_BEFORE_DAYS: Final = 30  # a certificate expiring sooner than this is reissued
BACKDATE_S: Final = 300  # not_valid_before this far back: peers whose clocks are a little behind accept it
HOSTS_MAX: Final = 64
PEM_BYTES_MAX: Final = 64 * 1024
TLS_HANDSHAKE_TIMEOUT_S: Final = 2  # nats-server's bound on a client's TLS handshake
KEY_MODE: Final = 0o600
CERT_MODE: Final = 0o644
DIR_MODE: Final = 0o700

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # 1-63 characters, no hyphen at either end
_DNS = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}")
_SERVER_USAGES: Final = frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})
_CLIENT_USAGES: Final = frozenset({ExtendedKeyUsageOID.CLIENT_AUTH})
_PKCS8: Final = (Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())  # how keys are written, unencrypted
_Extension = tuple[x509.ExtensionType, bool]  # (extension, critical)
_HINT: Final = "run `spacegrid up` once to generate them, or pass {flag}"
_CA_USAGE: Final = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # cert_sign, crl_sign
_LEAF_USAGE: Final = x509.KeyUsage(True, False, False, False, False, False, False, False, False)  # digital_signature


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of one certificate: the CA that signed it, the certificate, and its private key (mode 0600)."""

    ca_path: Path
    cert_path: Path
    key_path: Path


def ensure_ca(directory: Path, common_name: str = DEFAULT_CA_NAME) -> tuple[Path, Path]:
    """(ca.pem, ca-key.pem) in `directory`: created once (self-signed, 10 years), returned as they are afterwards.
    Raises ConfigError when only one of the two exists (certificates it signed could no longer be checked)."""
    with _created_and_locked(directory):
        cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
        present = [path for path in (cert_path, key_path) if path.exists()]
        if len(present) == 2:
            return cert_path, key_path
        if present:
            raise ConfigError(f"{present[0]} exists without its pair (ca.pem, ca-key.pem); restore that, or delete "
                              f"{present[0]} to create a new CA (then every certificate it signed is issued again)")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign(common_name, key.public_key(), None, key, CA_VALID_DAYS, [
            (x509.BasicConstraints(ca=True, path_length=0), True), (_CA_USAGE, True)])
        _write_atomic(key_path, key.private_bytes(*_PKCS8), KEY_MODE)  # key first: a cert on disk has its key
        _write_atomic(cert_path, cert.public_bytes(Encoding.PEM), CERT_MODE)
        return cert_path, key_path


def issue_certificate(directory: Path, name: str, *, server: bool, hosts: Sequence[str] = DEFAULT_HOSTS,
                      valid_days: int = VALID_DAYS_MAX) -> TlsFiles:
    """`<name>.pem` + `<name>-key.pem` in `directory`, signed by its CA (created first if absent). A server
    certificate names `hosts` (IP addresses and DNS names) and serves both ways (serverAuth, clientAuth); a client
    certificate is CN=name, clientAuth only, and ignores `hosts`. An existing certificate is reused unless it is
    damaged, not signed by this CA, of the other kind, missing one of `hosts`, or expiring within 30 days."""
    if not _NAME.fullmatch(name) or name in ("ca", "ca-key") or name.endswith("-key"):
        raise ConfigError(f"certificate name {name!r}: 1-64 of A-Z a-z 0-9 _ . -, not 'ca' nor ending in '-key'")
    if not RENEW_BEFORE_DAYS < valid_days <= VALID_DAYS_MAX:
        raise ConfigError(f"valid_days must be in ({RENEW_BEFORE_DAYS}, {VALID_DAYS_MAX}], got {valid_days}")
    names = _general_names(hosts) if server else frozenset()
    usages = _SERVER_USAGES if server else _CLIENT_USAGES
    ca_path, ca_key_path = ensure_ca(directory)
    with _created_and_locked(directory):
        files = TlsFiles(ca_path, directory / f"{name}.pem", directory / f"{name}-key.pem")
        ca = _load_cert(ca_path, "CA certificate", "--tls-ca")
        if _reusable(files, ca, names, usages):
            return files
        ca_key = load_pem_private_key(_read_pem(ca_key_path, "CA key", "--tls-ca"), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"CA key {ca_key_path} is not an EC key; delete ca.pem and ca-key.pem to create one")
        key = ec.generate_private_key(ec.SECP256R1())
        extensions: list[_Extension] = [
            (x509.BasicConstraints(ca=False, path_length=None), True), (_LEAF_USAGE, True),
            (x509.ExtendedKeyUsage(sorted(usages, key=lambda oid: oid.dotted_string)), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)]
        if names:
            extensions.append((x509.SubjectAlternativeName(sorted(names, key=str)), False))
        cert = _sign(name, key.public_key(), ca.subject, ca_key, valid_days, extensions)
        _write_atomic(files.key_path, key.private_bytes(*_PKCS8), KEY_MODE)  # key first: a cert on disk has its key
        _write_atomic(files.cert_path, cert.public_bytes(Encoding.PEM), CERT_MODE)
        return files


def client_context(ca_path: Path, cert_path: Path | None = None, key_path: Path | None = None) -> ssl.SSLContext:
    """An ssl context for connecting to the grid: TLS 1.2 at least, the server verified against `ca_path` and its
    host name checked, presenting the client certificate when `cert_path` and `key_path` are given (both or none).
    Raises ConfigError naming the file that is missing, unreadable or not PEM, and what to do."""
    if (cert_path is None) != (key_path is None):
        raise ConfigError("a TLS client certificate needs its key: pass both --tls-cert and --tls-key, or neither")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED  # PROTOCOL_TLS_CLIENT's defaults
    _load_cert(ca_path, "CA certificate", "--tls-ca")  # a missing, unreadable or damaged file is named first
    context.load_verify_locations(cafile=ca_path)
    if cert_path is not None and key_path is not None:
        _read_pem(cert_path, "client certificate", "--tls-cert")
        _read_pem(key_path, "client key", "--tls-key")
        try:
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"TLS client certificate {cert_path} with key {key_path} can't be loaded ({exc}); "
                              "check that they belong together, or pass --tls-cert and --tls-key") from exc
    return context


def describe(cert_path: Path) -> dict[str, str | list[str]]:
    """What `spacegrid status` and the docs show of a certificate: subject and issuer ("CN=..."), SANs, expiry
    (ISO 8601, UTC) and SHA-256 fingerprint (colon-separated hex, as openssl prints it)."""
    cert = _load_cert(cert_path, "certificate", "--tls-cert")
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "sans": [str(general.value) for general in _sans(cert)],
            "not_valid_after": cert.not_valid_after_utc.isoformat(),
            "sha256_fingerprint": cert.fingerprint(hashes.SHA256()).hex(":").upper()}


def _sign(common_name: str, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey, valid_days: int, extensions: list[_Extension]) -> x509.Certificate:
    """A certificate for `public_key`, CN=common_name, signed by `issuer_key` (self-signed when `issuer` is None)."""
    now, subject = _now(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(seconds=BACKDATE_S))
               .not_valid_after(now + dt.timedelta(days=valid_days))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _reusable(files: TlsFiles, ca: x509.Certificate, names: frozenset[x509.GeneralName],
              usages: frozenset[x509.ObjectIdentifier]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
        key = load_pem_private_key(files.key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        have_usages = frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False  # missing or damaged: issue it again
    return (cert.public_key() == key.public_key()
            and cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS)
            and have_usages == usages and names <= frozenset(_sans(cert)))


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return [general for extension in cert.extensions if isinstance(extension.value, x509.SubjectAlternativeName)
            for general in extension.value]


def _general_names(hosts: Sequence[str]) -> frozenset[x509.GeneralName]:
    assert not isinstance(hosts, str), f"hosts is a sequence of host names, not one string: pass ({hosts!r},)"
    if not 1 <= len(hosts) <= HOSTS_MAX:
        raise ConfigError(f"a server certificate names 1 to {HOSTS_MAX} hosts, got {len(hosts)}")
    names: set[x509.GeneralName] = set()
    for host in hosts:
        try:
            names.add(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if len(host) > 253 or not _DNS.fullmatch(host):
                raise ConfigError(f"host {host!r} is neither an IP address nor a DNS name") from None
            names.add(x509.DNSName(host.lower()))
    return frozenset(names)


def _read_pem(path: Path, what: str, flag: str) -> bytes:
    hint = _HINT.format(flag=flag)
    try:
        with path.open("rb") as file:
            data = file.read(PEM_BYTES_MAX + 1)
    except OSError as exc:  # its strerror says which: "No such file or directory", "Permission denied", ...
        raise ConfigError(f"TLS {what} {path} can't be read ({exc.strerror}); {hint}") from None
    if len(data) > PEM_BYTES_MAX or b"-----BEGIN " not in data:
        raise ConfigError(f"TLS {what} {path} is not a PEM file (of at most {PEM_BYTES_MAX} bytes); {hint}")
    return data


def _load_cert(path: Path, what: str, flag: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read_pem(path, what, flag))
    except ValueError as exc:
        hint = _HINT.format(flag=flag)
        raise ConfigError(f"TLS {what} {path} holds no valid certificate ({exc}); {hint}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@contextmanager
def _created_and_locked(directory: Path) -> Iterator[None]:
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, KEY_MODE)
    except OSError as exc:
        raise ConfigError(f"can't create the TLS directory {directory} ({exc.strerror}); check its parent") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for the milliseconds it takes to create a key and certificate
        yield
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file created with `mode` (a key is never readable by others), renamed over `path`."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask or a temp file left by a crash had
            file.write(data)
            file.flush()
            os.fsync(fd)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"can't write {path} ({exc.strerror}); check the permissions of {path.parent}") from exc


def server_config(files: TlsFiles, routes: bool) -> tuple[list[str], list[str]]:
    """nats-server configuration lines for TLS: the client listener's block (clients verify the server against
    the CA; they authenticate with their credentials, not certificates) and, for a cluster (`routes`), the block
    inside `cluster { }` (both ends of a route present the CA's certificates and verify each other's)."""
    q = json.dumps
    files_lines = [f"  cert_file: {q(str(files.cert_path))}", f"  key_file: {q(str(files.key_path))}",
                   f"  ca_file: {q(str(files.ca_path))}", f"  timeout: {TLS_HANDSHAKE_TIMEOUT_S}"]
    client = ["tls {", *files_lines, "}"]
    route = ["  tls {", *(f"  {line}" for line in files_lines), "    verify: true", "  }"] if routes else []
    return client, route
