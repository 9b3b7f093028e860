"""sslmode against a real TLS handshake: a TLS front for the test PostgreSQL (tests/relay.py)
with a certificate for 127.0.0.1 only, signed by a throwaway CA. Each mode must mean what it
means to libpq: encrypt or not, check the CA or not, check the host name or not."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devtools import seed
from tests.relay import TlsFront


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA as verifiers expect it (RFC 5280 4.2.1): critical basicConstraints and keyUsage,
    and a Subject Key Identifier (Python 3.13 verifies with VERIFY_X509_STRICT and refuses a
    chain without key identifiers)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_KEY_USAGE_CA, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


_KEY_USAGE_CA = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[bytes, bytes]:
    """A certificate for the IP 127.0.0.1 only, signed by `ca`: (certificate PEM, key PEM)."""
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    return _issue(ca_key, ca, "127.0.0.1", san)


def client_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, user: str
) -> tuple[bytes, bytes]:
    """A client certificate for database user `user` (its CN), signed by `ca`: (PEM, key PEM)."""
    return _issue(ca_key, ca, user)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    common_name: str,
    san: x509.SubjectAlternativeName | None = None,
) -> tuple[bytes, bytes]:
    """A leaf certificate for `common_name` (and `san`), signed by `ca`, with key identifiers."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    cert = (
        builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem(cert), key_pem


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
    front = TlsFront((postgres.host, postgres.port), context)
    yield front, directory
    front.close()
    shutil.rmtree(directory)


@pytest.mark.slow
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
        ("127.0.0.1", "sslrootcert=system", False, None),  # system roots do not know the CA
    ],
)
def test_sslmode_means_what_libpq_means(
    admin, postgres, tls_pg, make_app, host, query, served, encrypted
):
    front, directory = tls_pg
    seed.seed_users(admin, 3, progress=False)
    front.encrypted.clear()
    url = postgres.url(host=host, port=front.port, query=query.format(dir=directory))
    client = make_app(DATABASE_URL=url).test_client()
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
