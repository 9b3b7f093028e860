"""Google's side of a Cloud SQL connection, faked at the network boundary on loopback addresses.

The real `Connector`, google-auth and aiohttp run unchanged against four small pieces:

- `TokenEndpoint`: the service-account key's `token_uri`. google-auth posts a JWT signed with
  the key; the fake checks the signature with the key's public key, the issuer and the
  audience, so a token exists only if google-auth's real flow ran. Tokens are bound to the
  principal and the scopes asked for.
- `AdminApi`: `connectSettings` and `generateEphemeralCert` of the Cloud SQL Admin API
  v1beta4, shaped as connector 1.23's client.py reads them. Both require a token with the
  sqlservice.admin scope. The ephemeral certificate signs the posted public key with the
  fake's client CA and lives `cert_lifetime_s`. For IAM login the request's `access_token`
  must be a sqlservice.login token; its principal is bound into the certificate (as an
  email SAN). It can refuse (403, 404) or be slow, and counts calls.
- `ServerProxy`: the instance's server proxy, on port 3307 (the connector dials that port)
  of one loopback address per IP type. TLS 1.3 with a certificate from the server CA that
  connectSettings hands out, a client certificate from the client CA required (OpenSSL
  refuses one expired or from another CA), then bytes relayed to the test PostgreSQL.
  Connector 1.23 checks the server's chain only (`check_hostname = False`), so the names in
  the server certificate are not what is tested.
  pg8000 asks for TLS again inside the tunnel; like Cloud SQL the proxy declines ('N').
  A certificate bound to a principal is an IAM login: the proxy checks that the startup
  packet's user is that principal, logs in to PostgreSQL itself with the role's password,
  which only the fake knows (Cloud SQL uses the token), and relays from AuthenticationOk
  on. So an IAM login succeeds only through a certificate made for a checked login token,
  and the client is never asked for a password.
- `CertificateAuthority`: the server CA and the client CA (with key identifiers: Python 3.13
  verifies X.509 strictly).

Addresses are random in 127.0.0.0/8 so parallel test runs do not collide on port 3307.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import ipaddress
import json
import random
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import scramp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.admin"
LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # google-auth's, whatever the token_uri
SERVER_PROXY_PORT = 3307
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


@functools.cache
def rsa_key(role: str) -> rsa.RSAPrivateKey:
    """One 2048-bit key per role for the whole test run: generating one costs ~0.1 s."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, name: str) -> None:
        self.key = rsa_key(name)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _pem(self.cert)

    def issue(
        self,
        public_key: Any,
        common_name: str,
        lifetime_s: float,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=1))
            .not_valid_after(_now() + datetime.timedelta(seconds=lifetime_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())


class TokenEndpoint:
    """OAuth2's JWT-bearer grant, as google-auth's service-account credentials use it."""

    def __init__(self, key: rsa.RSAPrivateKey, key_id: str, email: str) -> None:
        self._public_key = key.public_key()
        self._key_id = key_id
        self.email = email
        self.uri = ""  # set once the HTTP server has its address
        self._tokens: dict[str, tuple[str, set[str]]] = {}
        self._lock = threading.Lock()

    def grant(self, form: dict[str, list[str]]) -> tuple[int, dict]:
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = self._verified_claims(form["assertion"][0])
        except Exception as exc:  # noqa: BLE001 - any defect means "not a valid assertion"
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        token = "ya29.fake-" + base64.urlsafe_b64encode(random.randbytes(18)).decode()
        with self._lock:
            self._tokens[token] = (claims["iss"], set(claims.get("scope", "").split()))
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def mint(self, email: str, scopes: set[str]) -> dict:
        """A token for `email`, as the metadata server hands one to the runtime's account."""
        token = "ya29.fake-" + base64.urlsafe_b64encode(random.randbytes(18)).decode()
        with self._lock:
            self._tokens[token] = (email, scopes)
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def principal(self, token: str, scope: str) -> str | None:
        """The principal a token was issued to, if it carries `scope` (cloud-platform
        carries the Admin API's, not the login's)."""
        with self._lock:
            email, scopes = self._tokens.get(token, ("", set()))
        admin = scope == ADMIN_SCOPE and CLOUD_PLATFORM_SCOPE in scopes
        return email if scope in scopes or admin else None

    def self_signed(self, token: str) -> str | None:
        """The principal of a self-signed JWT access token (what gRPC clients of Google APIs
        send for a service-account key instead of asking the token endpoint), if valid."""
        try:
            claims = self._verified_claims(token, audience=None)
        except Exception:  # noqa: BLE001 - any defect means "not a valid token"
            return None
        return claims["iss"]

    def _verified_claims(self, assertion: str, audience: str | None = TOKEN_AUDIENCE) -> dict:
        head, body, signature = assertion.split(".")
        header = json.loads(_unb64(head))
        if header.get("alg") != "RS256" or header.get("kid") != self._key_id:
            raise ValueError(f"unexpected JWT header {header}")
        self._public_key.verify(  # raises InvalidSignature
            _unb64(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        claims = json.loads(_unb64(body))
        if claims["iss"] != self.email or (audience and claims["aud"] != audience):
            raise ValueError("wrong issuer or audience")
        if not claims["iat"] - 60 <= time.time() < claims["exp"]:
            raise ValueError("assertion expired")
        return claims


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class AdminApi:
    """`connectSettings` and `generateEphemeralCert` for the instances of one project."""

    tokens: TokenEndpoint
    project: str
    region: str
    instances: dict[str, dict[str, str]]  # name -> {PRIMARY / PRIVATE / PSC: loopback address}
    server_ca: CertificateAuthority
    client_ca: CertificateAuthority
    cert_lifetime_s: float = 3600.0
    refuse_with: int | None = None  # answer this HTTP status instead
    delay_s: float = 0.0  # answer this much later
    calls: Counter = field(default_factory=Counter)  # per method, all instances together
    calls_by_instance: Counter = field(default_factory=Counter)  # (instance, method)
    login_principals: list[str] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, "GET /path")
    stopping: threading.Event = field(default_factory=threading.Event)

    def handle(self, method: str, path: str, token: str, body: dict) -> tuple[int, dict]:
        base = f"/sql/v1beta4/projects/{self.project}/instances/"
        name, _, call = path.removeprefix(base).partition("/")
        if ":" in name:
            name, _, call = name.partition(":")
        self.calls[call] += 1
        self.calls_by_instance[name, call] += 1
        self.stopping.wait(self.delay_s)
        if self.tokens.principal(token, ADMIN_SCOPE) is None:
            return _api_error(401, "Request had invalid authentication credentials.")
        if self.refuse_with is not None:
            return _api_error(self.refuse_with, "The client is not authorized.")
        if not path.startswith(base) or name not in self.instances:
            return _api_error(404, "The Cloud SQL instance does not exist.")
        if method == "GET" and call == "connectSettings":
            return 200, self._connect_settings(self.instances[name])
        if method == "POST" and call == "generateEphemeralCert":
            return self._ephemeral_cert(body)
        return _api_error(404, f"no such method {call}")

    def _connect_settings(self, addresses: dict[str, str]) -> dict:
        return {
            "kind": "sql#connectSettings",
            "serverCaCert": {"kind": "sql#sslCert", "cert": self.server_ca.pem},
            "ipAddresses": [
                {"type": "PRIMARY", "ipAddress": addresses["PRIMARY"]},
                {"type": "PRIVATE", "ipAddress": addresses["PRIVATE"]},
            ],
            "pscEnabled": True,
            # Cloud SQL names a PSC endpoint in DNS; an address literal stands in for the name
            # (getaddrinfo returns it as is), so no DNS or /etc/hosts change is needed.
            "dnsNames": [
                {
                    "name": addresses["PSC"] + ".",
                    "connectionType": "PRIVATE_SERVICE_CONNECT",
                    "dnsScope": "INSTANCE",
                }
            ],
            "region": self.region,
            "databaseVersion": "POSTGRES_18",
            "backendType": "SECOND_GEN",
            "serverCaMode": "GOOGLE_MANAGED_INTERNAL_CA",
        }

    def _ephemeral_cert(self, body: dict) -> tuple[int, dict]:
        public_key = serialization.load_pem_public_key(body["public_key"].encode())
        sans = None
        if "access_token" in body:
            principal = self.tokens.principal(body["access_token"], LOGIN_SCOPE)
            if principal is None:
                return _api_error(400, "access_token is not a sqlservice.login token")
            self.login_principals.append(principal)
            sans = [x509.RFC822Name(principal)]
        cert = self.client_ca.issue(
            public_key,
            "Google Cloud SQL Client",
            self.cert_lifetime_s,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            sans,
        )
        return 200, {"ephemeralCert": {"kind": "sql#sslCert", "cert": _pem(cert)}}


def _api_error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"code": status, "message": message}}


class ServerProxy:
    """One instance's server proxy on port 3307 of several loopback addresses."""

    def __init__(
        self,
        addresses: list[str],
        server_ca: CertificateAuthority,
        client_ca: CertificateAuthority,
        upstream: tuple[str, int],
        iam_passwords: dict[str, str],
        port: int = SERVER_PROXY_PORT,
    ) -> None:
        self.upstream = upstream
        self.server_ca, self.client_ca = server_ca, client_ca
        # IAM user -> its PostgreSQL password; an IAM user not added to the instance has none
        self.iam_passwords = iam_passwords
        self._context = _server_context(addresses, server_ca, client_ca)
        self._lock = threading.Lock()
        self.tunnels: Counter = Counter()  # per address
        self.open = 0
        self.peak = 0
        self.refused_handshakes = 0
        self.iam_logins: list[str] = []
        self.client_serials: set[int] = set()
        self.login_delay_s = 0.0  # a slow login: wait this long before PostgreSQL sees it
        self.login_denied: set[str] = set()  # principals without cloudsql.instances.login
        self._sockets: set[socket.socket] = set()
        self._listeners: list[socket.socket] = []
        try:
            for address in addresses:
                self._listeners.append(socket.create_server((address, port)))
        except OSError:
            self.close()
            raise
        for listener, address in zip(self._listeners, addresses, strict=True):
            threading.Thread(target=self._accept, args=(listener, address), daemon=True).start()

    def close(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket, address: str) -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw, address), daemon=True).start()

    def _serve(self, raw: socket.socket, address: str) -> None:
        raw.settimeout(5)
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            with self._lock:
                self.refused_handshakes += 1
            raw.close()
            return
        upstream = None
        with self._lock:
            self.tunnels[address] += 1
            self.open += 1
            self.peak = max(self.peak, self.open)
            self._sockets.add(client)
        try:
            upstream = self._start_session(client)
            if upstream is not None:
                client.settimeout(None)
                _relay(client, upstream)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
                self._sockets.discard(client)
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _start_session(self, client: ssl.SSLSocket) -> socket.socket | None:
        """Read the startup packet (declining TLS inside the tunnel); open the session."""
        cert = client.getpeercert() or {}
        self.client_serials.add(int(cert.get("serialNumber", "0"), 16))
        principals = [value for kind, value in cert.get("subjectAltName", ()) if kind == "email"]
        packet = _read_packet(client)
        while struct.unpack("!i", packet[4:8])[0] in (SSL_REQUEST, GSSENC_REQUEST):
            client.sendall(b"N")
            packet = _read_packet(client)
        params = _startup_params(packet)
        time.sleep(self.login_delay_s)
        upstream = socket.create_connection(self.upstream, timeout=5)
        upstream.sendall(packet)
        if not principals:
            return upstream  # password login: PostgreSQL asks the client
        user = params.get("user", "")
        if user != principals[0].removesuffix(".gserviceaccount.com"):
            client.sendall(_error("28000", f"user {user} is not the certificate's principal"))
            upstream.close()
            return None
        if principals[0] in self.login_denied:
            message = f'Cloud SQL IAM service account authentication failed for user "{user}"'
            client.sendall(_error("28000", message))
            upstream.close()
            return None
        if user not in self.iam_passwords:  # what PostgreSQL says of an unknown role
            client.sendall(_error("28000", f'role "{user}" does not exist'))
            upstream.close()
            return None
        _login(upstream, user, self.iam_passwords[user])
        with self._lock:
            self.iam_logins.append(user)
        return upstream


def _server_context(
    addresses: list[str], server_ca: CertificateAuthority, client_ca: CertificateAuthority
) -> ssl.SSLContext:
    key = rsa_key("server proxy")
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = server_ca.issue(
        key.public_key(), "server-proxy", 86400, ExtendedKeyUsageOID.SERVER_AUTH, sans
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=client_ca.pem)
    with pem_files(key, cert) as path:
        context.load_cert_chain(path)
    return context


@contextlib.contextmanager
def pem_files(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> Iterator[Path]:
    """A key and its certificate in one PEM file, for ssl's load_cert_chain."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chain.pem"
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.write_bytes(key_pem + _pem(cert).encode())
        yield path


def _relay(client: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    peers = {client: upstream, upstream: client}
    while True:
        # Bytes already decrypted inside the TLS object do not wake select().
        ready = [client] if client.pending() else select.select(list(peers), [], [])[0]
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            peers[sock].sendall(data)


def _login(upstream: socket.socket, user: str, password: str) -> None:
    """Answer PostgreSQL's SCRAM challenge for `user`; stop before AuthenticationOk, which is
    relayed to the client with the rest of the session."""
    kind, body = _read_message(upstream)
    if kind != b"R" or struct.unpack("!i", body[:4])[0] != 10:  # AuthenticationSASL
        raise OSError(f"unexpected first message {kind!r} from PostgreSQL")
    mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
    scram = scramp.ScramClient(mechanisms, user, password)
    first = scram.get_client_first().encode()
    mechanism = scram.mechanism_name.encode() + b"\0"
    upstream.sendall(_message(b"p", mechanism + struct.pack("!i", len(first)) + first))
    _kind, body = _read_message(upstream)  # AuthenticationSASLContinue
    scram.set_server_first(body[4:].decode())
    upstream.sendall(_message(b"p", scram.get_client_final().encode()))
    _kind, body = _read_message(upstream)  # AuthenticationSASLFinal
    scram.set_server_final(body[4:].decode())


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _read_packet(sock: socket.socket) -> bytes:
    """An untyped message (SSLRequest, StartupMessage): length-prefixed."""
    head = _read_exact(sock, 4)
    return head + _read_exact(sock, struct.unpack("!i", head)[0] - 4)


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _read_exact(sock, 5)
    return head[:1], _read_exact(sock, struct.unpack("!i", head[1:])[0] - 4)


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _startup_params(packet: bytes) -> dict[str, str]:
    parts = packet[8:].split(b"\0")
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 2, 2)}


def _error(code: str, message: str) -> bytes:
    fields = f"SFATAL\0VFATAL\0C{code}\0M{message}\0\0".encode()
    return _message(b"E", fields)


class GoogleFake:
    """A service account, its key file, the token endpoint, the Admin API and the server proxy."""

    def __init__(
        self,
        tmp_path: Path,
        upstream: tuple[str, int],
        instance: str = "my-proj:us-central1:main",
        email: str = "fn@my-proj.iam.gserviceaccount.com",
    ) -> None:
        project, region, name = instance.split(":")
        self.instance = instance
        key = rsa_key("service account")
        self.tokens = TokenEndpoint(key, "key-1", email)
        self.runtime_email = email  # the service account the metadata server names
        self.iam_passwords: dict[str, str] = {}
        server_ca, client_ca = (
            CertificateAuthority("fake server CA"),
            CertificateAuthority("client CA"),
        )
        self.proxy, self.addresses = _bind_proxy(upstream, self.iam_passwords, server_ca, client_ca)
        self.proxies = {instance: self.proxy}
        self.api = AdminApi(
            self.tokens, project, region, {name: self.addresses}, server_ca, client_ca
        )
        self._http = ThreadingHTTPServer((_random_loopback(), 0), _handler(self))
        self._http.daemon_threads = True
        host, port = self._http.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self.tokens.uri = f"{self.endpoint}/token"
        threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True).start()
        self.key_file = tmp_path / "service-account.json"
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.key_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": project,
                    "private_key_id": "key-1",
                    "private_key": pem,
                    "client_email": email,
                    "client_id": "1",
                    "token_uri": self.tokens.uri,
                }
            )
        )

    def env(self, **extra: str) -> dict[str, str]:
        """The function's environment for this instance (add DB_USER/DB_PASS or DB_IAM_USER)."""
        return {
            "INSTANCE_CONNECTION_NAME": self.instance,
            "CLOUD_SQL_API_ENDPOINT": self.endpoint,
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.key_file),
            "DATABASE_URL": "",
            **extra,
        }

    def add_instance(self, instance: str, upstream: tuple[str, int]) -> ServerProxy:
        """Another instance of the same project and region (a read replica, say): its own
        server proxy and addresses, relaying to `upstream`, with the same CAs."""
        proxy, addresses = _bind_proxy(
            upstream, self.iam_passwords, self.proxy.server_ca, self.proxy.client_ca
        )
        self.api.instances[instance.split(":")[2]] = addresses
        self.proxies[instance] = proxy
        return proxy

    def metadata(self, path: str, flavor: str | None) -> tuple[int, dict | str]:
        """The metadata server of a Cloud Run instance running as `runtime_email`: what
        google-auth asks (the ping at /, the account's email, its tokens, the project)."""
        self.api.calls["metadata"] += 1
        if flavor != "Google":
            return 403, "Missing Metadata-Flavor:Google header."
        route, _, query = path.partition("?")
        base = "/computeMetadata/v1/"
        if route == "/":
            return 200, "computeMetadata/"
        if route == base + "project/project-id":
            return 200, self.api.project
        account, _, leaf = route.removeprefix(base + "instance/service-accounts/").partition("/")
        if account not in ("default", self.runtime_email):  # by alias or by email
            return 404, "Not Found"
        if leaf == "":
            return 200, {"email": self.runtime_email, "scopes": [CLOUD_PLATFORM_SCOPE]}
        if leaf == "token":
            scopes = parse_qs(query).get("scopes", [CLOUD_PLATFORM_SCOPE])[0].split(",")
            return 200, self.tokens.mint(self.runtime_email, set(scopes))
        return 404, "Not Found"

    def metadata_env(self, **extra: str) -> dict[str, str]:
        """The function's environment on Cloud Run: no key file, the metadata server's address."""
        host = self.endpoint.removeprefix("http://")
        return {
            **self.env(**extra),
            "GOOGLE_APPLICATION_CREDENTIALS": "",
            "GCE_METADATA_HOST": host,
            "GCE_METADATA_IP": host,
        }

    def refreshes(self) -> int:
        """Certificate refreshes so far: each asks for one ephemeral certificate."""
        return self.api.calls["generateEphemeralCert"]

    def close(self) -> None:
        self.api.stopping.set()
        self._http.shutdown()
        self._http.server_close()
        for proxy in self.proxies.values():
            proxy.close()


def _random_loopback() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"


def _bind_proxy(
    upstream: tuple[str, int],
    iam_passwords: dict[str, str],
    server_ca: CertificateAuthority,
    client_ca: CertificateAuthority,
) -> tuple[ServerProxy, dict[str, str]]:
    """A server proxy on port 3307 of one address per IP type (PRIMARY, PRIVATE, PSC)."""
    for _ in range(20):
        addresses = [_random_loopback() for _ in range(3)]
        try:
            proxy = ServerProxy(addresses, server_ca, client_ca, upstream, iam_passwords)
        except OSError:  # taken by another run: draw again
            continue
        return proxy, dict(zip(["PRIMARY", "PRIVATE", "PSC"], addresses, strict=True))
    raise RuntimeError("no free loopback addresses for port 3307")


def _handler(fake: GoogleFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.api.timeline.append((time.monotonic(), f"GET {self.path}"))
            if self.path == "/" or self.path.startswith("/computeMetadata/"):
                self._answer(*fake.metadata(self.path, self.headers.get("Metadata-Flavor")))
                return
            self._answer(*fake.api.handle("GET", self.path, self._token(), {}))

        def do_POST(self) -> None:
            fake.api.timeline.append((time.monotonic(), f"POST {self.path}"))
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/token":
                fake.api.calls["token"] += 1
                self._answer(*fake.tokens.grant(parse_qs(body.decode())))
            else:
                self._answer(*fake.api.handle("POST", self.path, self._token(), json.loads(body)))

        def _token(self) -> str:
            return self.headers.get("Authorization", "").removeprefix("Bearer ")

        def _answer(self, status: int, payload: dict | str) -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                fake.api.timeline.append((time.monotonic(), f"answered {self.path}"))
            except OSError:
                pass  # the client gave up (a cancelled connect)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
