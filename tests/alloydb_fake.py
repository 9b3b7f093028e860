"""Google's side of an AlloyDB connection, faked at the network boundary on loopback addresses.

The real AlloyDB Connector, its generated gRPC client, google-auth and grpcio run unchanged
against two pieces, next to tests/google_fake.py's token endpoint and metadata server:

- `AdminApi`: the AlloyDB Admin API v1beta over gRPC with TLS, as the connector's pg8000
  path calls it: `GetConnectionInfo` (the instance's addresses) and
  `GenerateClientCertificate` (the posted public key signed by the fake's client CA, with
  the CA that signed the server proxy's certificate). Both need a token with the
  cloud-platform scope. gRPC trusts the fake's TLS certificate through
  GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (grpcio reads it once, at its first secure channel, so
  one CA serves the whole test run). It can refuse with a gRPC status, and counts calls.
- `AlloyDbProxy`: the instance's server proxy on port 5433 (the connector dials that port) of
  one loopback address per IP type: TLS 1.3 requiring a client certificate from the client
  CA, then the connector's metadata exchange (a length-prefixed MetadataExchangeRequest
  carrying an OAuth2 token and the auth type), answered OK or with an error, then bytes
  relayed to the test PostgreSQL. The token must carry alloydb.login or cloud-platform; the
  proxy logs its principal in, for AUTO_IAM, with the role's password only the fake knows, as
  google_fake.ServerProxy does for Cloud SQL.
"""

from __future__ import annotations

import functools
import socket
import ssl
import struct
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.cloud.alloydb_connectors_v1.proto import resources_pb2 as connectorspb
from google.cloud.alloydb_v1beta import types as alloydb

from tests.google_fake import (
    CLOUD_PLATFORM_SCOPE,
    GSSENC_REQUEST,
    SSL_REQUEST,
    CertificateAuthority,
    GoogleFake,
    ServerProxy,
    _error,
    _login,
    _pem,
    _random_loopback,
    _read_exact,
    _read_packet,
    _startup_params,
    rsa_key,
)

ALLOYDB_PORT = 5433
LOGIN_SCOPE = "https://www.googleapis.com/auth/alloydb.login"
SERVICE = "google.cloud.alloydb.v1beta.AlloyDBAdmin"


@functools.cache
def api_ca() -> tuple[CertificateAuthority, Path]:
    """The CA of the fake Admin API's TLS certificate, and the PEM file gRPC trusts."""
    ca = CertificateAuthority("fake Google API CA")
    path = Path(tempfile.mkdtemp(prefix="grpc-roots")) / "roots.pem"
    path.write_text(ca.pem)
    return ca, path


class AlloyDbProxy(ServerProxy):
    """An AlloyDB instance's server proxy: the metadata exchange, then PostgreSQL's protocol."""

    def __init__(self, fake: AlloyDbFake, addresses: list[str], upstream: tuple[str, int]):
        self.fake = fake
        self.exchanges: Counter = Counter()  # auth types asked for
        super().__init__(
            addresses,
            fake.server_ca,
            fake.client_ca,
            upstream,
            fake.google.iam_passwords,
            port=ALLOYDB_PORT,
        )

    def _start_session(self, client: ssl.SSLSocket) -> socket.socket | None:
        request = connectorspb.MetadataExchangeRequest()
        request.ParseFromString(_read_exact(client, struct.unpack(">I", _read_exact(client, 4))[0]))
        iam = request.auth_type == connectorspb.MetadataExchangeRequest.AUTO_IAM
        with self._lock:
            self.exchanges["AUTO_IAM" if iam else "DB_NATIVE"] += 1
        tokens = self.fake.google.tokens
        principal = tokens.principal(request.oauth2_token, LOGIN_SCOPE) or tokens.principal(
            request.oauth2_token, CLOUD_PLATFORM_SCOPE
        )
        if principal is None:
            _answer(client, "the OAuth2 token is not valid for alloydb.login")
            return None
        _answer(client, None)
        packet = _read_packet(client)
        while struct.unpack("!i", packet[4:8])[0] in (SSL_REQUEST, GSSENC_REQUEST):
            client.sendall(b"N")  # pg8000 asks for TLS inside the tunnel; the proxy declines
            packet = _read_packet(client)
        upstream = socket.create_connection(self.upstream, timeout=5)
        upstream.sendall(packet)
        if not iam:
            return upstream  # password login: PostgreSQL asks the client
        user = _startup_params(packet).get("user", "")
        if user != principal.removesuffix(".gserviceaccount.com"):
            client.sendall(_error("28000", f"user {user} is not the token's principal"))
            upstream.close()
            return None
        _login(upstream, user, self.iam_passwords[user])
        with self._lock:
            self.iam_logins.append(user)
        return upstream


def _answer(client: ssl.SSLSocket, error: str | None) -> None:
    response = connectorspb.MetadataExchangeResponse(
        response_code=connectorspb.MetadataExchangeResponse.ERROR
        if error
        else connectorspb.MetadataExchangeResponse.OK,
        error=error or "",
    )
    data = response.SerializeToString()
    client.sendall(struct.pack(">I", len(data)) + data)


class AlloyDbFake:
    """One AlloyDB cluster of `google`'s project: its Admin API and its instances' proxies."""

    def __init__(
        self, google: GoogleFake, cluster: str = "projects/my-proj/locations/us-central1/clusters/c"
    ) -> None:
        self.google = google
        self.cluster = cluster
        self.server_ca = CertificateAuthority("fake AlloyDB server CA")
        self.client_ca = CertificateAuthority("fake AlloyDB client CA")
        self.cert_lifetime_s = 3600.0
        self.refuse_with: grpc.StatusCode | None = None
        self.calls: Counter = Counter()  # (instance or cluster, method)
        self.instances: dict[str, dict[str, str]] = {}  # URI -> {PRIVATE/PUBLIC/PSC: address}
        self.proxies: dict[str, AlloyDbProxy] = {}
        ca, _ = api_ca()
        key = rsa_key("fake AlloyDB API")
        cert = ca.issue(
            key.public_key(),
            "localhost",
            86400,
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.DNSName("localhost")],
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._server = grpc.server(ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((self._handlers(),))
        credentials = grpc.ssl_server_credentials([(key_pem, _pem(cert).encode())])
        port = self._server.add_secure_port("localhost:0", credentials)
        self._server.start()
        self.endpoint = f"localhost:{port}"

    def add_instance(self, name: str, upstream: tuple[str, int]) -> str:
        """An instance of the cluster (the primary, or a read pool), relaying to `upstream`:
        its URI."""
        uri = f"{self.cluster}/instances/{name}"
        for _ in range(20):
            addresses = [_random_loopback() for _ in range(3)]
            try:
                proxy = AlloyDbProxy(self, addresses, upstream)
            except OSError:  # taken by another run: draw again
                continue
            self.proxies[uri] = proxy
            self.instances[uri] = dict(zip(["PRIVATE", "PUBLIC", "PSC"], addresses, strict=True))
            return uri
        raise RuntimeError("no free loopback addresses for port 5433")

    def env(self, *uris: str, **extra: str) -> dict[str, str]:
        """The function's environment for these instances (add DB_USER/DB_PASS or DB_IAM_AUTH)."""
        _, roots = api_ca()
        return {
            "ALLOYDB_INSTANCE_URI": ",".join(uris),
            "ALLOYDB_API_ENDPOINT": self.endpoint,
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(roots),
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.google.key_file),
            "DATABASE_URL": "",
            **extra,
        }

    def refreshes(self, uri: str) -> int:
        return self.calls[uri, "GetConnectionInfo"]

    def close(self) -> None:
        self._server.stop(grace=None)
        for proxy in self.proxies.values():
            proxy.close()

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(method: Any, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request_type.deserialize,
                response_serializer=response_type.serialize,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetConnectionInfo": unary(
                    self._connection_info, alloydb.GetConnectionInfoRequest, alloydb.ConnectionInfo
                ),
                "GenerateClientCertificate": unary(
                    self._client_certificate,
                    alloydb.GenerateClientCertificateRequest,
                    alloydb.GenerateClientCertificateResponse,
                ),
            },
        )

    def _check(self, context: grpc.ServicerContext, name: str, method: str) -> None:
        self.calls[name, method] += 1
        token = dict(context.invocation_metadata()).get("authorization", "").removeprefix("Bearer ")
        tokens = self.google.tokens
        if (tokens.principal(token, CLOUD_PLATFORM_SCOPE) or tokens.self_signed(token)) is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "Request had invalid credentials.")
        if self.refuse_with is not None:
            context.abort(
                self.refuse_with, f"Permission 'alloydb.instances.connect' denied on {name}"
            )

    def _connection_info(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(context, request.parent, "GetConnectionInfo")
        addresses = self.instances.get(request.parent)
        if addresses is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.parent}' was not found")
        return alloydb.ConnectionInfo(
            name=f"{request.parent}/connectionInfo",
            ip_address=addresses["PRIVATE"],
            public_ip_address=addresses["PUBLIC"],
            psc_dns_name=addresses["PSC"] + ".",
            instance_uid="fake-uid",
        )

    def _client_certificate(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(context, request.parent, "GenerateClientCertificate")
        if request.parent != self.cluster:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.parent}' was not found")
        public_key = serialization.load_pem_public_key(request.public_key.encode())
        cert = self.client_ca.issue(
            public_key, "alloydb client", self.cert_lifetime_s, ExtendedKeyUsageOID.CLIENT_AUTH
        )
        return alloydb.GenerateClientCertificateResponse(
            pem_certificate_chain=[_pem(cert), self.client_ca.pem],
            ca_cert=self.server_ca.pem,
        )
