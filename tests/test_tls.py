"""sslmode against a real TLS handshake: a TLS front for the test PostgreSQL with a
certificate for 127.0.0.1 only, signed by a throwaway CA. Each mode must mean what it means
to libpq: encrypt or not, check the CA or not, check the host name or not."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
import tempfile
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools import seed


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[bytes, bytes]:
    """A certificate for the IP 127.0.0.1 only, signed by `ca`: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem(cert), key_pem


class TlsTerminator:
    """What a TLS-enabled PostgreSQL does at the door (the wheel's server is built without
    TLS): answer the client's SSLRequest, do the handshake with our certificate, then relay
    the decrypted protocol to the plain server. Records which connections were encrypted."""

    SSL_REQUEST = struct.pack("!ii", 8, 80877103)

    def __init__(self, upstream_port: int, context: ssl.SSLContext) -> None:
        self.upstream_port, self.context = upstream_port, context
        self.encrypted: list[bool] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            first = client.recv(8, socket.MSG_WAITALL)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            if first == self.SSL_REQUEST:
                client.sendall(b"S")
                client = self.context.wrap_socket(client, server_side=True)
                self.encrypted.append(True)
            else:
                upstream.sendall(first)
                self.encrypted.append(False)
        except (OSError, ssl.SSLError):
            client.close()  # a client that rejected our certificate
            return
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=_relay, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self._listener.close()


def _relay(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for sock in (src, dst):
        with contextlib.suppress(OSError):
            sock.close()


@pytest.fixture(scope="module")
def tls_pg(postgres):
    """A TLS front for the test server, its certificate valid for the IP 127.0.0.1 only."""
    directory = Path(tempfile.mkdtemp(prefix="pgtls"))
    ca_key, ca = make_ca("test CA")
    (directory / "ca.pem").write_bytes(pem(ca))
    (directory / "other-ca.pem").write_bytes(pem(make_ca("someone else")[1]))
    (directory / "server.pem").write_bytes(b"".join(server_certificate(ca_key, ca)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem")
    front = TlsTerminator(postgres.port, context)
    yield front, directory
    front.close()


def url(front: TlsTerminator, host: str, query: str) -> str:
    return f"postgresql://postgres:postgres@{host}:{front.port}/postgres?{query}"


@pytest.mark.parametrize(
    ("host", "query", "served", "encrypted"),
    [
        ("127.0.0.1", "sslmode=disable", True, False),
        ("127.0.0.1", "sslmode=prefer", True, True),
        ("127.0.0.1", "sslmode=require", True, True),
        ("localhost", "sslmode=require", True, True),  # require checks no certificate
        ("127.0.0.1", "sslmode=verify-ca&sslrootcert={dir}/ca.pem", True, True),
        ("localhost", "sslmode=verify-ca&sslrootcert={dir}/ca.pem", True, True),  # no host check
        ("127.0.0.1", "sslmode=verify-full&sslrootcert={dir}/ca.pem", True, True),
        ("localhost", "sslmode=verify-full&sslrootcert={dir}/ca.pem", False, None),  # wrong name
        ("127.0.0.1", "sslmode=verify-ca&sslrootcert={dir}/other-ca.pem", False, None),
        ("127.0.0.1", "sslmode=require&sslrootcert={dir}/other-ca.pem", False, None),  # = verify-ca
        ("127.0.0.1", "sslmode=verify-full", False, None),  # system roots do not know the CA
    ],
)
def test_sslmode_means_what_libpq_means(admin, tls_pg, make_app, host, query, served, encrypted):
    front, directory = tls_pg
    seed.seed_users(admin, 3, progress=False)
    front.encrypted.clear()
    client = make_app(DATABASE_URL=url(front, host, query.format(dir=directory))).test_client()
    response = client.get("/")
    # A certificate that fails verification will not pass by itself: a configuration error.
    assert response.status_code == (200 if served else 500), response.get_data(as_text=True)
    if not served:
        error = response.get_json()["error"]
        assert error["code"] == "configuration_error"
        assert "certificate" in error["message"] and "sslrootcert" in error["message"]
    if served:
        assert len(response.get_json()["users"]) == 3
        assert front.encrypted and all(e is encrypted for e in front.encrypted)
