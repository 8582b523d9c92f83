"""The local grid's certificate authority, its certificates, and a real mutual-TLS handshake over loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from spacegrid.errors import ConfigError
from spacegrid.security import tls
from spacegrid.security.tls import TlsFiles, client_context, describe, ensure_ca, issue_certificate

TIMEOUT_S = 5.0


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """(IP addresses, DNS names) of a certificate's SubjectAlternativeName."""
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ({str(ip) for ip in san.get_values_for_type(x509.IPAddress)}, set(san.get_values_for_type(x509.DNSName)))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_is_created_once_and_then_reused(tmp_path: Path) -> None:
    """ensure_ca creates a self-signed CA limited to signing leaf certificates, and a second call returns the same
    files byte for byte instead of creating another CA."""
    ca_path, ca_key_path = ensure_ca(tmp_path / "tls")
    first = (ca_path.read_bytes(), ca_key_path.read_bytes())
    assert ensure_ca(tmp_path / "tls") == (ca_path, ca_key_path)
    assert (ca_path.read_bytes(), ca_key_path.read_bytes()) == first
    ca = _load(ca_path)
    ca.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3649)


def test_a_half_present_ca_is_refused_not_replaced(tmp_path: Path) -> None:
    """A CA certificate whose key is gone is not silently replaced (certificates it signed would stop verifying):
    the error names the file and what to do."""
    ca_path, ca_key_path = ensure_ca(tmp_path)
    ca_key_path.unlink()
    with pytest.raises(ConfigError, match=rf"{ca_path} exists without its pair.*delete"):
        ensure_ca(tmp_path)


def test_key_files_are_0600_and_a_new_directory_0700(tmp_path: Path) -> None:
    """Private keys (the CA's and a certificate's) are written with mode 0600, certificates stay readable, and a
    directory that did not exist is created with mode 0700; no temporary file is left behind."""
    directory = tmp_path / "new" / "tls"
    files = issue_certificate(directory, "node-1", server=True)
    assert _mode(directory) == 0o700
    assert _mode(directory / "ca-key.pem") == 0o600 and _mode(files.key_path) == 0o600
    assert _mode(files.cert_path) == 0o644 and _mode(files.ca_path) == 0o644
    assert sorted(path.name for path in directory.iterdir() if path.name.endswith(".tmp")) == []


def test_a_server_certificate_is_signed_by_the_ca_and_names_the_hosts_asked_for(tmp_path: Path) -> None:
    """A server certificate verifies against the CA, carries the requested IP addresses and DNS names as SANs,
    and serves both ways (serverAuth and clientAuth, as nats-server routes need); describe() reports it."""
    files = issue_certificate(tmp_path, "node-1", server=True, hosts=("10.0.0.7", "node-1.grid.local", "::1"))
    assert files == TlsFiles(tmp_path / "ca.pem", tmp_path / "node-1.pem", tmp_path / "node-1-key.pem")
    cert, ca = _load(files.cert_path), _load(files.ca_path)
    cert.verify_directly_issued_by(ca)
    assert _sans(cert) == ({"10.0.0.7", "::1"}, {"node-1.grid.local"})
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    info = describe(files.cert_path)
    assert info["subject"] == "CN=node-1" and info["issuer"] == "CN=spacegrid local CA"
    assert sorted(info["sans"]) == sorted(["10.0.0.7", "node-1.grid.local", "::1"])
    assert info["not_valid_after"] == cert.not_valid_after_utc.isoformat()
    assert str(info["sha256_fingerprint"]).count(":") == 31


def test_a_client_certificate_is_client_auth_only(tmp_path: Path) -> None:
    """A client certificate is CN=<name>, clientAuth only, without SANs, signed by the same CA."""
    files = issue_certificate(tmp_path, "app-1", server=False)
    cert = _load(files.cert_path)
    cert.verify_directly_issued_by(_load(files.ca_path))
    assert describe(files.cert_path)["subject"] == "CN=app-1" and describe(files.cert_path)["sans"] == []
    usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_a_certificate_is_reused_until_its_hosts_change_or_it_nears_expiry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issuing again with the same hosts (or a subset) reuses the certificate; a host it does not name yet, a
    change of kind, or an expiry within 30 days issues a new one."""
    first = issue_certificate(tmp_path, "node-1", server=True, hosts=("127.0.0.1", "localhost"))
    original = first.cert_path.read_bytes()
    assert issue_certificate(tmp_path, "node-1", server=True, hosts=("127.0.0.1", "localhost")) == first
    issue_certificate(tmp_path, "node-1", server=True, hosts=("localhost",))
    assert first.cert_path.read_bytes() == original
    issue_certificate(tmp_path, "node-1", server=True, hosts=("127.0.0.1", "localhost", "10.1.2.3"))
    widened = first.cert_path.read_bytes()
    assert widened != original and _sans(_load(first.cert_path)) == ({"127.0.0.1", "10.1.2.3"}, {"localhost"})
    issue_certificate(tmp_path, "node-1", server=False)
    assert first.cert_path.read_bytes() != widened
    client = first.cert_path.read_bytes()
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=825 - 29)
    monkeypatch.setattr(tls, "_now", lambda: later)
    issue_certificate(tmp_path, "node-1", server=False)
    assert first.cert_path.read_bytes() != client
    assert _load(first.cert_path).not_valid_after_utc > later + dt.timedelta(days=800)


def test_bad_names_and_hosts_are_refused(tmp_path: Path) -> None:
    """Names that would collide with the CA's files, and hosts that are neither IP nor DNS, are refused."""
    for name in ("ca", "ca-key", "node-key", "../x", ""):
        with pytest.raises(ConfigError, match="certificate name"):
            issue_certificate(tmp_path, name, server=False)
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        issue_certificate(tmp_path, "node-1", server=True, hosts=("bad host",))
    with pytest.raises(ConfigError, match="valid_days"):
        issue_certificate(tmp_path, "node-1", server=True, valid_days=10)


def test_client_context_names_the_missing_or_broken_file(tmp_path: Path) -> None:
    """client_context raises ConfigError naming the missing CA, the missing client key, or a file that is not PEM,
    and says how to get the files."""
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'ca.pem'} can't be read.*spacegrid up.*--tls-ca"):
        client_context(tmp_path / "ca.pem")
    files = issue_certificate(tmp_path, "app-1", server=False)
    files.key_path.unlink()
    with pytest.raises(ConfigError, match=rf"client key {files.key_path} can't be read.*--tls-key"):
        client_context(files.ca_path, files.cert_path, files.key_path)
    files.key_path.write_text("not a key")
    with pytest.raises(ConfigError, match=rf"{files.key_path} is not a PEM file"):
        client_context(files.ca_path, files.cert_path, files.key_path)
    with pytest.raises(ConfigError, match="pass both --tls-cert and --tls-key"):
        client_context(files.ca_path, files.cert_path)
    context = client_context(files.ca_path)
    assert context.check_hostname and context.minimum_version == ssl.TLSVersion.TLSv1_2


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_path, files.key_path)
    context.load_verify_locations(files.ca_path)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _exchange(server_files: TlsFiles, client: ssl.SSLContext) -> bytes:
    """Start a TLS server requiring client certificates on 127.0.0.1:0, connect with `client`, send b"ping", and
    return what the server answers: b"pong " + the client certificate's CN."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readexactly(4), TIMEOUT_S)
            subject = dict(pair[0] for pair in writer.get_extra_info("peercert")["subject"])
            writer.write(request.replace(b"ping", b"pong ") + subject["commonName"].encode())
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=_server_context(server_files))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=client), TIMEOUT_S)
        try:
            writer.write(b"ping")
            await writer.drain()
            return await asyncio.wait_for(reader.read(100), TIMEOUT_S)
        finally:
            writer.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT_S)


def test_a_mutual_tls_handshake_on_loopback(tmp_path: Path) -> None:
    """A client context over the CA, presenting a client certificate, completes a real handshake with a server
    that requires client certificates, and the server sees the client's CN."""
    server_files = issue_certificate(tmp_path, "node-1", server=True)
    client_files = issue_certificate(tmp_path, "app-1", server=False)
    client = client_context(client_files.ca_path, client_files.cert_path, client_files.key_path)
    assert asyncio.run(_exchange(server_files, client)) == b"pong app-1"


def test_a_client_trusting_another_ca_refuses_the_server(tmp_path: Path) -> None:
    """A client whose CA is a different one (another grid's) fails the handshake verifying the server."""
    server_files = issue_certificate(tmp_path / "grid-a", "node-1", server=True)
    other = issue_certificate(tmp_path / "grid-b", "app-1", server=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_exchange(server_files, client_context(other.ca_path, other.cert_path, other.key_path)))
