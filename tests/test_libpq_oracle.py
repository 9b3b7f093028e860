"""lib.database_url.uri against libpq itself (issue 16, part 3): a differential test.

Every URI (PostgreSQL's own URI tests, the URLs providers hand out, generated edge cases) is
given to libpq (psycopg's bundled libpq, the oracle) and to `lib.database_url.uri.parse`. They
must agree: both refuse it, or both take it with the same meaning. A refusal of ours of what
libpq takes is agreement only when its message says "not supported" and names the keyword
(pg8000 or the function cannot do it), never "unknown parameter". The few intended
deviations are listed in DEVIATIONS, with why; every other disagreement is a failing case.

How libpq's verdict is read, with no server and nothing sent beyond the loopback interface:

1. PQconninfoParse (`pq.Conninfo.parse`): the URI syntax; values kept as bytes.
2. PQconnectStart on libpq's own parse, host names given hostaddr=255.255.255.255 (and every
   numeric hostaddr replaced by it): connectOptions2's checks (sslmode, sslrootcert=system,
   host/hostaddr/port counts, require_auth...), then each host's port, hostaddr and socket
   path, and the TCP socket options (keepalives); no DNS look-up, and the kernel refuses a
   TCP connect to the broadcast address at once (ENETUNREACH), so every host is tried.
   PQconninfo of that connection gives libpq's effective values (defaults applied).
3. PQconnectStart against a loopback socket of this test that answers the SSLRequest 'S'
   (GSSENCRequest 'N', a startup packet with a FATAL error): libpq loads its TLS files
   (sslrootcert, sslcert/sslkey, ~/.postgresql/...) and builds the startup packet.
4. PQconnectdb against a loopback port that refuses at once: only the blocking connect
   parses connect_timeout.
Steps 3 and 4 dial TCP whatever the URI's hosts are, so TCP-only options (keepalives,
connect_timeout) are judged even for a URI whose hosts are all Unix sockets (libpq would
only look at them over TCP). libpq's messages are sorted into option refusals and network
errors by pattern; a message of neither kind fails the case until it is classified here.
HOME is a temporary directory (one of four: empty, with ~/.postgresql/root.crt, with a
client certificate and key, with a certificate and no key) and PG* variables are unset.

Meaning compared (ours normalised into libpq's keywords; text as bytes, our surrogate
escapes encoded back with surrogateescape): hosts (name, port, hostaddr), user, password,
dbname, sslmode with what is verified, sslnegotiation, sslsni, channel_binding,
require_auth, connect_timeout, application_name, fallback_application_name, options as the
server reads them, keepalives (the timings the URI sets; unset ones are the kernel's to
libpq), target_session_attrs, load_balance_hosts. Other keywords: accepted or refused.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import ssl
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import pq

from lib.database_url.uri import IGNORED, DatabaseUrl, parse
from lib.errors import ConfigError
from tests.report import figure
from tests.test_tls import make_ca, pem, server_certificate

CASES_DIR = Path(__file__).parent / "libpq_cases"

# The intended deviations, by URI (as written in the case lists), with why. A listed URI on
# which both agree fails: the entry is stale.
AT_IN_PASSWORD = (
    "an unencoded '@' in the password: libpq ends the user info at the first '@' (user app, "
    "password p, host ss@host), the project at the last (password p@ss, host host), as "
    "node-postgres and WHATWG URL parsers read it"
)
# The project's own spellings, which libpq refuses: other clients' keys and our pooler and
# schema keys, node-postgres's sslmode=no-verify, SQLAlchemy's scheme. A URI that uses them
# must mean, once they are taken out (no-verify read as require), what libpq reads.
EXTENSION_KEYS = {"pgbouncer", "schema", "unix_sock", *IGNORED}


def without_extensions(uri: str) -> str | None:
    """`uri` without the project's extensions, or None when it uses none."""
    plain = uri.replace("postgresql+pg8000://", "postgresql://", 1)
    plain = plain.replace("sslmode=no-verify", "sslmode=require")
    base, sep, query = plain.partition("?")
    if sep:
        pairs = [p for p in query.split("&") if p.partition("=")[0] not in EXTENSION_KEYS]
        plain = base + ("?" + "&".join(pairs) if pairs else "")
    return plain if plain != uri else None


# What a deviation may change; anything else differing on a listed URI still fails.
DEVIATION_FIELDS = {AT_IN_PASSWORD: {"hosts", "user", "password"}}
DEVIATIONS = {
    "postgresql://app:p@ss@host/db": AT_IN_PASSWORD,
    "postgresql://app:p@ss@host:5433/db?sslmode=require": AT_IN_PASSWORD,
    "postgresql://app:a@b@c@host/db": AT_IN_PASSWORD,
}

# --- the cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    uri: str  # as written, placeholders and all
    home: str = "empty"  # which HOME: empty, root, client, client-nokey


def _postgres_cases() -> list[Case]:
    """tests/libpq_cases/postgres_uri_tests.txt: a JSON string per line, then an optional
    PGSSLROOTCERT=system (becomes the URI parameter sslrootcert=system)."""
    cases = []
    decoder = json.JSONDecoder()
    for line in (CASES_DIR / "postgres_uri_tests.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        uri, end = decoder.raw_decode(line)
        env = line[end:].strip()
        if env == "PGSSLROOTCERT=system":
            uri += ("&" if "?" in uri else "?") + "sslrootcert=system"
        elif env:
            raise AssertionError(f"unknown environment in {line!r}")
        cases.append(Case(f"postgres{len(cases):03d}", uri))
    return cases


def _provider_cases() -> list[Case]:
    cases = []
    for line in (CASES_DIR / "providers.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, uri = line.split("\t")
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            cases.append(Case(f"provider{len(cases):02d}-{slug}", uri))
    return cases


B = "postgresql://u:pw@h/db"  # the base the generated query parameters are added to

# Generated cases: a fixed, hand-written combinatorial list (deterministic), (URI, HOME).
_GENERATED: list[tuple[str, str]] = [
    # Percent-encodings: UTF-8, bytes that are not UTF-8, %00, bad escapes, case of hex.
    *[
        (f"postgresql://u:pw@h/{db}", "empty")
        for db in ("caf%C3%A9", "caf%c3%a9", "caf%E9", "%FF", "%E9t%E9", "a%00b", "a%2Fb")
    ],
    *[
        (f"postgresql://u:pw@h/db{q}", "empty")
        for q in ("%", "%2", "%zz", "%%", "%25", "%3F", "%20", "%23")
    ],
    ("postgresql://caf%E9:pw@h/db", "empty"),
    ("postgresql://u:p%E9%FF@h/db", "empty"),
    ("postgresql://u:p%00w@h/db", "empty"),
    ("postgresql://u%00:pw@h/db", "empty"),
    ("postgresql://h%00/db", "empty"),
    ("postgresql://h%E9/db", "empty"),
    (f"{B}?application_name=caf%E9", "empty"),
    (f"{B}?application_name=a%00b", "empty"),
    (f"{B}?sslmode%00=require", "empty"),
    (f"{B}?%73slmode=require", "empty"),
    (f"{B}?options=-c%20application_name%3Dcaf%E9", "empty"),
    # Unencoded non-ASCII in the URI itself (sent to libpq as UTF-8).
    ("postgresql://u:pw@h/café", "empty"),
    ("postgresql://u:pässword@h/db", "empty"),
    # User info: empty parts, '?', '#', '/', ':' and '@' in the password.
    ("postgresql://u:@h/db", "empty"),
    ("postgresql://:pw@h/db", "empty"),
    ("postgresql://@h/db", "empty"),
    ("postgresql://u:pa?ss@h/db", "empty"),
    ("postgresql://u:pa#ss@h/db", "empty"),
    ("postgresql://u:pa/ss@h/db", "empty"),
    ("postgresql://u:pa:ss@h/db", "empty"),
    ("postgresql://u:pa%40ss@h/db", "empty"),
    ("postgresql://app:p@ss@host/db", "empty"),
    ("postgresql://app:p@ss@host:5433/db?sslmode=require", "empty"),
    ("postgresql://app:a@b@c@host/db", "empty"),
    ("postgresql://h/db?password=p@ss", "empty"),
    ("postgresql://h/db?user=a@b", "empty"),
    # Spaces around and inside hosts, paths, keys and values (libpq trims ' ' at the ends).
    ("postgresql:// h/db", "empty"),
    ("postgresql://h /db", "empty"),
    ("postgresql://h 1/db", "empty"),
    ("postgresql://u:pw@h/ db ", "empty"),
    ("postgresql://u :pw@h/db", "empty"),
    (f"{B}? sslmode =require", "empty"),
    (f"{B}?sslmode= require ", "empty"),
    (f"{B}?sslmode=%20require", "empty"),
    (f"{B}?application_name=my app", "empty"),
    (f"{B}?application_name=my%20app", "empty"),
    (f"{B}?application_name= my%20app ", "empty"),
    (f"{B}?application_name=%20spaced%20", "empty"),
    (f"{B}?application_name=tab%09", "empty"),
    ("postgresql://h\t/db", "empty"),
    ("postgresql://h%20/db", "empty"),
    # Integers as strtol reads them: signs, spaces, leading zeros, range.
    *[
        (f"postgresql://u:pw@h:{port}/db", "empty")
        for port in ("+5432", "-5432", "05432", "0", "1", "65535", "65536", "2147483648")
    ],
    *[(f"postgresql://u:pw@h:{p}/db", "empty") for p in ("5432x", "0x10", "")],
    *[
        (f"{B}?port={port}", "empty")
        for port in ("%205432", "5432%20", "%205432%20", "%095432", "5432%0A", "+0", "-1", "")
    ],
    *[
        (f"{B}?connect_timeout={t}", "empty")
        for t in ("10", "+10", "-1", "0", "1", "2", "010", "%2010", "10%20", "1e3", "ten", "")
    ],
    *[(f"{B}?keepalives={k}", "empty") for k in ("0", "1", "2", "-1", "+0", "00", "yes", "")],
    *[
        (f"{B}?keepalives_idle={k}", "empty")
        for k in ("30", "+30", "0", "-1", "%2030", "2147483648", "thirty", "")
    ],
    (f"{B}?keepalives_interval=3&keepalives_count=4", "empty"),
    (f"{B}?keepalives_count=0", "empty"),
    (f"{B}?keepalives=0&keepalives_idle=30", "empty"),
    (f"{B}?keepalives=0&keepalives_idle=x", "empty"),
    *[(f"{B}?tcp_user_timeout={k}", "empty") for k in ("9000", "0", "-1", "x")],
    ("postgresql://u:pw@%2Ftmp/db?keepalives_idle=x", "empty"),
    # IPv6, hostaddr, socket directories (also in [ ]), abstract sockets.
    ("postgresql://u:pw@[::1]/db", "empty"),
    ("postgresql://u:pw@[::1]:5433/db", "empty"),
    ("postgresql://u:pw@[fe80::1%25eth0]/db", "empty"),
    ("postgresql://u:pw@[::1],[2001:db8::2]:5433/db", "empty"),
    ("postgresql://u:pw@[::1]x/db", "empty"),
    ("postgresql://u:pw@[::1/db", "empty"),
    ("postgresql://u:pw@::1/db", "empty"),
    ("postgresql://u:pw@[/var/run/postgresql]/db", "empty"),
    ("postgresql://u:pw@[/tmp]:5433/db", "empty"),
    ("postgresql://u:pw@%2Ftmp/db", "empty"),
    ("postgresql://u:pw@%2Ftmp:5433/db", "empty"),
    ("postgresql://u:pw@%2Ftmp%2F/db", "empty"),
    ("postgresql://u:pw@%40abstract/db", "empty"),
    ("postgresql://u:pw@/db?host=@abstract", "empty"),
    ("postgresql://u:pw@/db?host=%40abstract", "empty"),
    ("postgresql://u:pw@/db?host={longdir}", "empty"),
    ("postgresql://u:pw@/db?host=/tmp&hostaddr=127.0.0.1", "empty"),
    ("postgresql://u:pw@%2Ftmp/db?hostaddr=127.0.0.1", "empty"),
    ("postgresql://u:pw@/db?hostaddr=127.0.0.1", "empty"),
    ("postgresql://u:pw@/db?hostaddr=127.0.0.1&port=5433", "empty"),
    ("postgresql://u:pw@/db?hostaddr=::1", "empty"),
    ("postgresql://u:pw@/db?hostaddr=127.1", "empty"),
    ("postgresql://u:pw@h/db?hostaddr=myhost.example.com", "empty"),
    ("postgresql://u:pw@h/db?hostaddr=", "empty"),
    ("postgresql://u:pw@h/db?hostaddr=10.0.0.1,10.0.0.2", "empty"),
    ("postgresql://u:pw@h1,h2/db?hostaddr=10.0.0.1,10.0.0.2", "empty"),
    ("postgresql://u:pw@h1,h2/db?hostaddr=10.0.0.1,", "empty"),
    ("postgresql://u:pw@/db?host=&hostaddr=10.0.0.1", "empty"),
    # Host lists: ports per host, empty entries, counts.
    ("postgresql://u:pw@h1,h2/db", "empty"),
    ("postgresql://u:pw@h1:5432,h2:5433/db", "empty"),
    ("postgresql://u:pw@h1,h2:5433/db", "empty"),
    ("postgresql://u:pw@h1:5433,h2/db", "empty"),
    ("postgresql://u:pw@h1,,h2/db", "empty"),
    ("postgresql://u:pw@h1,/db", "empty"),
    ("postgresql://u:pw@,h2/db", "empty"),
    ("postgresql://u:pw@h1,h2,h3/db?port=1,2", "empty"),
    ("postgresql://u:pw@h1,h2/db?port=5432", "empty"),
    ("postgresql://u:pw@h1,h2/db?port=5432,", "empty"),
    ("postgresql://u:pw@h1,h2:99999/db", "empty"),
    ("postgresql://u:pw@h1,h2:x/db", "empty"),
    ("postgresql://u:pw@/db?host=h1,%2Ftmp,@abs", "empty"),
    ("postgresql://u:pw@h1,h2/db?load_balance_hosts=random", "empty"),
    # Percent-encoded separators and digits in the authority, duplicated keys.
    ("postgresql://u:pw@h1%2Ch2/db", "empty"),
    ("postgresql://u:pw@h:54%332/db", "empty"),
    ("postgresql://u:pw@h%3A5433/db", "empty"),
    ("postgresql://u%3Ax:pw@h/db", "empty"),
    (f"{B}?sslmode=disable&sslmode=require", "empty"),
    (f"{B}?options=-c%20a%3D1&options=-c%20b%3D2", "empty"),
    ("postgresql://u:pw@h/db?hostaddr=fe80::1%25lo", "empty"),
    ("postgresql://u:pw@h/db?hostaddr=%20127.0.0.1", "empty"),
    # Empty values, trailing and doubled '&', '?' alone.
    *[
        (f"{B}?{key}=", "empty")
        for key in (
            "sslmode",
            "host",
            "port",
            "user",
            "password",
            "dbname",
            "options",
            "application_name",
            "client_encoding",
            "require_auth",
            "sslrootcert",
            "target_session_attrs",
            "channel_binding",
            "sslnegotiation",
            "sslsni",
            "gssencmode",
        )
    ],
    (f"{B}?sslmode=require&", "empty"),
    (f"{B}?&", "empty"),
    (f"{B}?&sslmode=require", "empty"),
    (f"{B}?sslmode=require&&application_name=x", "empty"),
    (f"{B}?", "empty"),
    (f"{B}??sslmode=require", "empty"),
    (f"{B}?sslmode", "empty"),
    (f"{B}?=require", "empty"),
    (f"{B}?application_name=a=b", "empty"),
    (f"{B}?application_name=a%3Db", "empty"),
    # Schemes.
    ("postgres://u:pw@h/db", "empty"),
    ("POSTGRESQL://u:pw@h/db", "empty"),
    ("postgresql:/h/db", "empty"),
    ("postgresql+pg8000://u:pw@h/db", "empty"),
    ("postgresql://u:pw@h/db#frag", "empty"),
    ("postgresql://u:pw@h/db/extra", "empty"),
    # Enumerations, spelled right, wrong, in the wrong case.
    *[
        (f"{B}?sslmode={mode}", "empty")
        for mode in ("disable", "allow", "prefer", "require", "Require", "verify", "no-verify")
    ],
    *[(f"{B}?channel_binding={v}", "empty") for v in ("disable", "prefer", "require", "x")],
    (f"{B}?channel_binding=require&sslmode=disable", "empty"),
    *[(f"{B}?gssencmode={v}", "empty") for v in ("disable", "prefer", "require", "x")],
    *[
        (f"{B}?sslnegotiation={v}&sslmode={m}", "empty")
        for v, m in (("direct", "require"), ("direct", "prefer"), ("postgres", "require"))
    ],
    (f"{B}?sslnegotiation=direct", "empty"),
    (f"{B}?sslnegotiation=x", "empty"),
    *[
        (f"{B}?target_session_attrs={v}", "empty")
        for v in ("any", "read-write", "read-only", "primary", "standby", "prefer-standby", "x")
    ],
    *[(f"{B}?load_balance_hosts={v}", "empty") for v in ("disable", "random", "x")],
    *[(f"{B}?sslcertmode={v}", "empty") for v in ("disable", "allow", "require", "x")],
    *[
        (f"{B}?require_auth={v}", "empty")
        for v in (
            "scram-sha-256",
            "md5,password",
            "!password,!md5",
            "none",
            "!none",
            "oauth",
            "!oauth",
            "gss,sspi",
            "md5,!password",
            "!md5,password",
            "password,password",
            "%20md5",
            "md5,",
            "x",
        )
    ],
    *[
        (f"{B}?{key}={v}", "empty")
        for key in ("min_protocol_version", "max_protocol_version")
        for v in ("3.0", "3.2", "latest", "3.1", "4")
    ],
    (f"{B}?min_protocol_version=3.2&max_protocol_version=3.0", "empty"),
    *[
        (f"{B}?{key}={v}", "empty")
        for key in ("ssl_min_protocol_version", "ssl_max_protocol_version")
        for v in ("TLSv1.2", "tlsv1.3", "TLSv1", "TLSv1.4", "x")
    ],
    (f"{B}?ssl_min_protocol_version=TLSv1.3&ssl_max_protocol_version=TLSv1.2", "empty"),
    *[(f"{B}?sslsni={v}", "empty") for v in ("0", "1", "2", "yes", "10", "01")],
    (f"{B}?sslsni=0&sslmode=verify-full&sslrootcert=system", "empty"),
    *[(f"{B}?sslcompression={v}", "empty") for v in ("0", "1", "x")],
    *[
        (f"{B}?client_encoding={v}", "empty")
        for v in ("UTF8", "utf8", "utf_8", "UTF-8", "unicode", "auto", "LATIN1", "SQL_ASCII")
    ],
    (f"{B}?ssl=true", "empty"),
    (f"{B}?ssl=false", "empty"),
    (f"{B}?requiressl=1", "empty"),
    (f"{B}?requiressl=0", "empty"),
    # Keywords the function cannot honour, and new keywords of libpq 17/18.
    *[
        (f"{B}?{key}={v}", "empty")
        for key, v in (
            ("service", "prod"),
            ("servicefile", "{missing}"),
            ("passfile", "{missing}"),
            ("requirepeer", "postgres"),
            ("krbsrvname", "postgres"),
            ("gsslib", "gssapi"),
            ("gssdelegation", "0"),
            ("gssdelegation", "1"),
            ("sslcrl", "{missing}"),
            ("sslcrldir", "{missing}"),
            ("replication", "database"),
            ("replication", "true"),
            ("oauth_issuer", "https%3A%2F%2Fissuer.example.com"),
            ("oauth_client_id", "abc"),
            ("oauth_client_secret", "s"),
            ("oauth_scope", "openid"),
            ("oauth_ca_file", "{ca}"),
            ("scram_client_key", "AAAA"),
            ("scram_server_key", "AAAA"),
            ("scram_client_key", "A" * 43 + "%3D"),  # 32 bytes, as libpq wants
            ("scram_server_key", "A" * 43 + "%3D"),
            ("sslkeylogfile", "{keylog}"),
            ("sslkeylogfile", "{missing}/keys.log"),
            ("sslpassword", "secret"),
            ("fallback_application_name", "etl"),
            ("fallback_application_name", ""),
            ("dbname", "override"),
            ("user", "override"),
            ("host", "override"),
            ("tty", "x"),
            ("authtype", "x"),
            ("connect_timeout", "5"),
            ("connection_limit", "1"),
            ("pgbouncer", "true"),
            ("schema", "app"),
        )
    ],
    # sslrootcert=system and the other TLS files; HOME decides the ~/.postgresql defaults.
    (f"{B}?sslrootcert=system", "empty"),
    *[
        (f"{B}?sslrootcert=system&sslmode={mode}", "empty")
        for mode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
    ],
    (f"{B}?sslrootcert=System", "empty"),
    *[
        (f"{B}?sslmode={mode}", home)
        for mode in ("verify-ca", "verify-full")
        for home in ("empty", "root")
    ],
    *[
        (f"{B}?sslmode={mode}&sslrootcert={{ca}}", "empty")
        for mode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
    ],
    *[
        (f"{B}?sslmode={mode}&sslrootcert={{missing}}", "empty")
        for mode in ("prefer", "require", "verify-ca", "verify-full")
    ],
    *[(f"{B}?sslmode={mode}", "root") for mode in ("allow", "prefer", "require")],
    *[
        (f"{B}?sslmode={mode}&sslcert={{cert}}&sslkey={{key}}", "empty")
        for mode in ("disable", "allow", "prefer", "require")
    ],
    *[
        (f"{B}?sslmode={mode}&sslcert={{cert}}", "empty")
        for mode in ("disable", "allow", "prefer", "require")
    ],
    *[(f"{B}?sslmode={mode}&sslcert={{missing}}", "empty") for mode in ("prefer", "require")],
    (f"{B}?sslmode=require&sslkey={{missing}}", "empty"),
    (f"{B}?sslmode=require&sslcert={{cert}}&sslkey={{missing}}", "empty"),
    (f"{B}?sslmode=require&sslcert={{ca}}&sslkey={{key}}", "empty"),
    *[
        (f"{B}?sslmode={mode}", home)
        for mode in ("disable", "allow", "prefer", "require")
        for home in ("client", "client-nokey")
    ],
    (f"{B}?sslmode=require&sslcertmode=disable", "client-nokey"),
    (f"{B}?sslmode=require&sslcert={{cert}}&sslkey={{key}}&sslpassword=x", "empty"),
    # options: -c and --, folding, getopt clusters, escapes, NBSP, other switches.
    *[
        (f"{B}?options={opts}", "empty")
        for opts in (
            "-c%20search_path%3Dapp",
            "-c%20search-path%3Dapp",
            "-csearch_path%3Dapp",
            "--search-path%3Dapp",
            "--search_path%3Dapp",
            "-c%20Search_Path%3Dapp",
            "-ec%20search_path%3Dapp",
            "-ec%20statement_timeout%3D1",
            "-c%20statement_timeout%3D1",
            "-c%20statement-timeout%3D1",
            "-c%20work_mem%3D64MB%20-c%20search_path%3Dapp",
            "-c%20search_path%3Da%5C%20b",
            "-c%20search_path%3Da%5C%5Cb",
            "-c%20application_name%3Da%C2%A0b",
            "-c%C2%A0search_path%3Dapp",
            "-c%09search_path%3Dapp%0A",
            "%20%20-c%20search_path%3Dapp%20%20",
            "-c%20search_path%3D",
            "-c%20search_path",
            "-c",
            "-c%20a%3Db%3Dc",
            "endpoint%3Dep-cool-darkness-123456",
            "-B%2016",
            "-e",
            "-S%201024",
            "-c%20geqo%3Doff%20endpoint%3Dx",
            "-",
            "%5C",
        )
    ],
]


def _generated_cases() -> list[Case]:
    return [Case(f"generated{i:03d}", uri, home) for i, (uri, home) in enumerate(_GENERATED)]


CASES = _postgres_cases() + _provider_cases() + _generated_cases()

# --- the environment: HOME, TLS files, loopback sockets --------------------------------------


@dataclass
class Environment:
    root: Path
    homes: dict[str, str]
    paths: dict[str, str]  # placeholder -> path
    listener: socket.socket  # answers SSLRequest (step 3)
    refusing_port: int  # bound, never listening: a connect is refused at once (step 4)
    default_socket_dir: bytes

    def render(self, uri: str) -> str:
        for placeholder, path in self.paths.items():
            uri = uri.replace(placeholder, path)
        return uri


@contextmanager
def environment() -> Iterator[Environment]:
    """A temporary HOME per variant, TLS files, no PG* variables, the loopback sockets."""
    root = Path(tempfile.mkdtemp(prefix="libpq-oracle-"))
    saved = dict(os.environ)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        stack.callback(os.environ.update, saved)
        stack.callback(os.environ.clear)
        for name in [name for name in os.environ if name.startswith("PG")]:
            del os.environ[name]
        ca_key, ca = make_ca("libpq oracle CA")
        cert_pem, key_pem = server_certificate(ca_key, ca)
        tls = root / "tls"
        tls.mkdir()
        (tls / "ca.pem").write_bytes(pem(ca))
        (tls / "client.crt").write_bytes(cert_pem)
        (tls / "client.key").write_bytes(key_pem)
        (tls / "client.key").chmod(0o600)
        homes = {}
        for variant in ("empty", "root", "client", "client-nokey"):
            dot = root / "home" / variant / ".postgresql"
            dot.mkdir(parents=True)
            homes[variant] = str(dot.parent)
        shutil.copy(tls / "ca.pem", root / "home/root/.postgresql/root.crt")
        for variant in ("client", "client-nokey"):
            shutil.copy(tls / "client.crt", root / f"home/{variant}/.postgresql/postgresql.crt")
        shutil.copy(tls / "client.key", root / "home/client/.postgresql/postgresql.key")
        (root / "home/client/.postgresql/postgresql.key").chmod(0o600)
        os.environ["HOME"] = homes["empty"]
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        listener.setblocking(False)
        refusing = stack.enter_context(socket.socket())
        refusing.bind(("127.0.0.1", 0))
        probe = pq.PGconn.connect_start(b"port=1")
        default_socket_dir = probe.host  # libpq's compiled DEFAULT_PGSOCKET_DIR
        probe.finish()
        yield Environment(
            root=root,
            homes=homes,
            paths={
                "{ca}": str(tls / "ca.pem"),
                "{cert}": str(tls / "client.crt"),
                "{key}": str(tls / "client.key"),
                "{missing}": str(root / "missing"),
                "{keylog}": str(root / "keys.log"),
                "{longdir}": "/" + "d" * 120,
            },
            listener=listener,
            refusing_port=refusing.getsockname()[1],
            default_socket_dir=default_socket_dir,
        )


# --- libpq's verdict -------------------------------------------------------------------------

NOWHERE = b"255.255.255.255"  # the kernel refuses a TCP connect to it at once: ENETUNREACH
DEADLINE_S = 2.0  # for one case's step 3; a case takes about a millisecond

# libpq's messages (after "connection to server ... failed: ") that refuse the options.
_OPTION_REFUSALS = [
    r"^invalid (integer )?value ",
    r"^invalid \S+ value: ",
    r'^invalid "\S+" value: ',
    r"^invalid port number: ",
    r"^invalid SSL protocol version range",
    r"^invalid SCRAM (client|server) key",
    r"^weak sslmode ",
    r"^could not match \d+ (host names|port numbers) to ",
    r"require_auth method .* (cannot be mixed|is specified more than once)",
    r"^definition of service .* not found",
    r"^service file .* not found",
    r"^could not parse network address ",
    r"^Unix-domain socket path .* is too long",
    r"^keepalives parameter must be an integer",
    r"^setsockopt\(\w+\) failed: ",
    r"^GSSAPI encryption required but ",
    r"^root certificate file .* does not exist",
    r"^could not read root certificate file ",
    r"^could not (open|load|read) (certificate|private key|SSL certificate revocation)",
    r"^certificate present, but not private key file",
    r"^private key file .* has group or world access",
    r"^could not (set|load) .*SSL",
    r"^could not load (client certificate|private key) file",
    r"^invalid (min|max)_protocol_version",
    r'^"min_protocol_version" is greater than "max_protocol_version"',
    r"^could not get home directory",
    r"^could not open file .* for (SSL key|writing)",
    r"is not supported",
    r"invalid when \S+ support is not compiled in",
    # PQconninfoParse
    r"^invalid URI query parameter",
    r"^missing \"=\" after ",
    r"^missing key/value separator ",
    r"^extra key/value separator ",
    r"^invalid percent-encoded token",
    r"^forbidden value %00",
    r"^unexpected spaces found in ",
    r"^end of string reached when looking for matching",
    r"^IPv6 host address may not be empty",
    r"^unexpected character .* in URI",
    r"^invalid connection option ",
]
# ...and those of a network or of the loopback socket of step 3 (none refuses an option).
_NETWORK_ERRORS = [
    r"^$",
    r"^\t",
    r"Network is unreachable",
    r"Connection refused",
    r"No such file or directory",
    r"Connection reset by peer",
    r"Broken pipe",
    r"^could not translate host name ",
    r"^server closed the connection unexpectedly",
    r"^This probably means the server terminated abnormally",
    r"before or while processing the request",
    r"^SSL SYSCALL error",
    r"^SSL error: ",
    r"^could not send (SSL negotiation|startup|GSSAPI negotiation) packet",
    r"^FATAL:  libpq oracle",
    r"^Either provide the file, use the system's trusted roots",
    r"^connection to server .* failed:$",
]


class UnclassifiedMessage(AssertionError):
    pass


def _refusals(message: bytes) -> list[str]:
    """The lines of libpq's error text that refuse an option; network errors dropped."""
    text = message.decode("utf-8", "backslashreplace")
    text = re.sub(r"connection to server .*? failed: ?", "", text, flags=re.S)
    refusals = []
    for line in text.splitlines():
        if any(re.search(p, line) for p in _OPTION_REFUSALS):
            refusals.append(line.strip())
        elif not any(re.search(p, line) for p in _NETWORK_ERRORS):
            raise UnclassifiedMessage(f"libpq said {line!r}: add it to a list of this test")
    return refusals


def _conninfo(values: dict[str, bytes]) -> bytes:
    """A keyword/value connection string of libpq's own parse (quoted, escaped)."""
    quoted = (v.replace(b"\\", b"\\\\").replace(b"'", b"\\'") for v in values.values())
    return b" ".join(k.encode() + b"='" + v + b"'" for k, v in zip(values, quoted, strict=True))


def _numeric(address: bytes) -> bool:
    """Would libpq's getaddrinfo(AI_NUMERICHOST) take it (same libc call, no DNS)?"""
    try:
        socket.getaddrinfo(address, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return False
    return True


def _nowhere(values: dict[str, bytes]) -> dict[str, bytes]:
    """Step 2: hostaddr=NOWHERE for each host name and numeric hostaddr (sockets left)."""
    addrs = values["hostaddr"].split(b",") if values.get("hostaddr") else None
    names = values["host"].split(b",") if values.get("host") else None
    n = len(addrs) if addrs else len(names) if names else 1
    addrs, names = addrs or [b""] * n, names or [b""] * n
    new = []
    for i, addr in enumerate(addrs):
        name = names[i] if i < len(names) else b""
        if addr:
            new.append(NOWHERE if _numeric(addr) else addr)
        else:
            new.append(NOWHERE if name and not name.startswith((b"/", b"@")) else b"")
    return {**values, "hostaddr": b",".join(new)} if any(new) else values


def _error_response(text: bytes) -> bytes:
    fields = b"SFATAL\0VFATAL\0C28000\0M" + text + b"\0\0"
    return b"E" + struct.pack("!i", 4 + len(fields)) + fields


def _serve(peer: socket.socket, buffer: bytearray) -> bool:
    """The loopback socket's side of step 3; False once it closed the connection."""
    try:
        data = peer.recv(65536)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        data = b""
    buffer += data
    while data and buffer:
        if buffer[0] == 0x16:  # a TLS ClientHello: libpq has loaded its TLS files
            break
        if len(buffer) < 8 or len(buffer) < struct.unpack_from("!i", buffer)[0]:
            return True
        length, code = struct.unpack_from("!ii", buffer)
        del buffer[:length]
        if code == 80877103:  # SSLRequest
            peer.sendall(b"S")
        elif code == 80877104:  # GSSENCRequest
            peer.sendall(b"N")
        else:  # a startup packet: libpq took the options (sslmode=allow then tries TLS)
            peer.sendall(_error_response(b"libpq oracle: no server here"))
            break
    else:
        if data:
            return True  # answered; the connection goes on
    peer.close()
    return False


def _drive(conn: pq.PGconn, listener: socket.socket) -> None:
    """Step 3: poll libpq and serve the loopback socket until libpq gives up."""
    peers: dict[socket.socket, bytearray] = {}
    wait = pq.PollingStatus.WRITING
    deadline = time.monotonic() + DEADLINE_S
    try:
        while conn.status != pq.ConnStatus.BAD:
            fd = conn.socket
            readers: list[object] = [listener, *peers]
            writers: list[object] = []
            (readers if wait == pq.PollingStatus.READING else writers).append(fd)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("libpq is still connecting to the loopback socket")
            ready_r, ready_w, _ = select.select(readers, writers, [], remaining)
            for sock in ready_r:
                if sock is listener:
                    peer, _ = listener.accept()
                    peer.setblocking(False)
                    peers[peer] = bytearray()
                elif sock in peers and not _serve(sock, peers[sock]):
                    del peers[sock]
            if fd in ready_r or fd in ready_w:
                wait = pq.PollingStatus(conn.connect_poll())
                if wait in (pq.PollingStatus.FAILED, pq.PollingStatus.OK):
                    break
    finally:
        for peer in peers:
            peer.close()


@dataclass
class Libpq:
    refusal: str | None  # why libpq refuses the URI, or None
    parsed: dict[str, bytes] = field(default_factory=dict)  # PQconninfoParse, set keywords
    info: dict[str, bytes] = field(default_factory=dict)  # PQconninfo: effective values


def libpq_verdict(uri: str, env: Environment) -> Libpq:
    try:
        options = pq.Conninfo.parse(uri.encode("utf-8", "surrogateescape"))
    except psycopg.Error as exc:
        return Libpq(f"PQconninfoParse: {str(exc).strip()}")
    parsed = {o.keyword.decode(): o.val for o in options if o.val is not None}
    # Step 2: connectOptions2 and each host, nothing dialled.
    conn = pq.PGconn.connect_start(_conninfo(_nowhere(parsed)))
    try:
        info = {o.keyword.decode(): o.val for o in conn.info if o.val is not None}
        if refusals := _refusals(conn.error_message):
            return Libpq("; ".join(refusals), parsed, info)
    finally:
        conn.finish()
    over_tcp = {**parsed, "host": b"127.0.0.1", "hostaddr": b""}
    # Step 3: a TCP connection that answers the SSLRequest.
    port = env.listener.getsockname()[1]
    conn = pq.PGconn.connect_start(_conninfo({**over_tcp, "port": str(port).encode()}))
    try:
        _drive(conn, env.listener)
        if refusals := _refusals(conn.error_message):
            return Libpq("; ".join(refusals), parsed, info)
    finally:
        conn.finish()
    # Step 4: the blocking connect, which alone parses connect_timeout.
    conn = pq.PGconn.connect(_conninfo({**over_tcp, "port": str(env.refusing_port).encode()}))
    try:
        if refusals := _refusals(conn.error_message):
            return Libpq("; ".join(refusals), parsed, info)
    finally:
        conn.finish()
    return Libpq(None, parsed, info)


# --- meanings --------------------------------------------------------------------------------

AUTH_METHODS = frozenset({"password", "md5", "gss", "sspi", "scram-sha-256", "oauth", "none"})
KEEPALIVE_TIMINGS = {  # libpq keyword -> our Keepalives field
    "keepalives_idle": "idle",
    "keepalives_interval": "interval",
    "keepalives_count": "count",
    "tcp_user_timeout": "user_timeout_ms",
}
_ARG_FLAGS = set(b"BCcDdfhkNprStvW-")  # the server's getopt string: flags with an argument
_C_SPACE = b" \t\n\v\f\r"


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _strtol(raw: bytes) -> int:
    """The value of an integer libpq accepted (pqParseIntParam: strtol, spaces around)."""
    return int(raw.strip(_C_SPACE))


def server_reading(raw: bytes) -> tuple[dict[bytes, bytes | None], list[tuple[bytes, ...]]]:
    """`options` as the server reads it (pg_split_opts, then process_postgres_switches'
    getopt): settings of -c/--name=value (name lower-cased, '-' read as '_'), and the
    other switches and words in order."""
    words, word, escaped, started = [], bytearray(), False, False
    for byte in raw:
        char = bytes([byte])
        if escaped:
            word += char
            escaped = False
        elif char == b"\\":
            escaped = started = True
        elif char in _C_SPACE:
            if started:
                words.append(bytes(word))
            word, started = bytearray(), False
        else:
            word += char
            started = True
    if started:
        words.append(bytes(word))
    settings: dict[bytes, bytes | None] = {}
    other: list[tuple[bytes, ...]] = []
    i = 0
    while i < len(words):
        word, i = words[i], i + 1
        if not word.startswith(b"-") or word == b"-":
            other.append((b"word", word))
            continue
        for j in range(1, len(word)):
            flag = word[j]
            if flag not in _ARG_FLAGS:
                other.append((b"-" + bytes([flag]),))
                continue
            argument = word[j + 1 :]
            if not argument:
                if i == len(words):
                    other.append((b"-" + bytes([flag]), b"<missing argument>"))
                    break
                argument, i = words[i], i + 1
            if flag in b"c-":
                name, eq, value = argument.partition(b"=")
                settings[name.replace(b"-", b"_").lower()] = value if eq else None
            else:
                other.append((b"-" + bytes([flag]), argument))
            break
    return settings, other


def _tls(mode: str, rootcert: bytes | None, home: str) -> tuple[str, str]:
    """libpq's sslmode and what it verifies: a root certificate file that exists (sslrootcert,
    else ~/.postgresql/root.crt) is checked in every mode that uses TLS, and libpq documents
    require-with-a-root-file as verify-ca (the project names it so)."""
    if mode == "disable":
        return mode, "none"
    if rootcert == b"system" or mode == "verify-full":
        return mode, "full"
    has_root = os.path.exists(rootcert or os.path.join(home, ".postgresql", "root.crt"))
    if mode == "verify-ca" or (has_root and mode == "require"):
        return "verify-ca", "ca"
    return mode, "ca" if has_root else "none"


def libpq_meaning(theirs: Libpq, env: Environment) -> dict[str, object]:
    parsed, info = theirs.parsed, theirs.info
    addrs = parsed["hostaddr"].split(b",") if parsed.get("hostaddr") else None
    names = parsed["host"].split(b",") if parsed.get("host") else None
    n = len(addrs) if addrs else len(names) if names else 1
    addrs, names = addrs or [b""] * n, names or [b""] * n
    ports = parsed["port"].split(b",") if parsed.get("port") else [b""]
    ports = ports * n if len(ports) == 1 else ports
    hosts = tuple(
        (name or addr or env.default_socket_dir, _strtol(port) if port else 5432, addr or None)
        for name, addr, port in zip(names, addrs, ports, strict=True)
    )
    require_auth = None
    if info.get("require_auth"):
        methods = info["require_auth"].decode().split(",")
        if methods[0].startswith("!"):
            require_auth = AUTH_METHODS - {m[1:] for m in methods}
        else:
            require_auth = frozenset(methods)
    timeout = _strtol(info["connect_timeout"]) if info.get("connect_timeout") else 0
    keepalives: tuple[object, ...] = ("off",)
    if "keepalives" not in info or _strtol(info["keepalives"]) != 0:
        keepalives = (
            "on",
            {k: max(_strtol(info[k]), 0) for k in KEEPALIVE_TIMINGS if k in info},
        )
    return {
        "hosts": hosts,
        "user": info["user"],
        "password": info.get("password") or None,
        "dbname": info["dbname"],
        "tls": _tls(info["sslmode"].decode(), info.get("sslrootcert"), os.environ["HOME"]),
        "sslnegotiation": info["sslnegotiation"].decode(),
        "sslsni": info["sslsni"].startswith(b"1"),
        "channel_binding": info["channel_binding"].decode(),
        "require_auth": require_auth,
        "connect_timeout": float(timeout) if timeout > 0 else None,
        "application_name": info.get("application_name") or None,
        "fallback_application_name": info.get("fallback_application_name") or None,
        "options": server_reading(info.get("options", b"")),
        "keepalives": keepalives,
        "target_session_attrs": info["target_session_attrs"].decode(),
        "load_balance_hosts": info["load_balance_hosts"].decode(),
    }


def our_meaning(u: DatabaseUrl, keepalive_keys: set[str]) -> dict[str, object]:
    context = u.ssl_context
    if context is None or context.verify_mode == ssl.CERT_NONE:
        verify = "none"
    else:
        verify = "full" if context.check_hostname else "ca"
    options = dict(u.options)
    settings, other = server_reading(_wire(options.pop("options", "")))
    settings.update({name.lower().encode(): _wire(v) for name, v in options.items()})
    keepalives: tuple[object, ...] = ("off",)
    if u.keepalives is not None:
        keepalives = (
            "on",
            {k: getattr(u.keepalives, KEEPALIVE_TIMINGS[k]) for k in keepalive_keys},
        )
    text = _wire
    return {
        "hosts": tuple((text(h.name), h.port, text(h.addr) if h.addr else None) for h in u.hosts),
        "user": text(u.user),
        "password": text(u.password) if u.password else None,
        "dbname": text(u.database),
        "tls": (u.sslmode, verify),
        "sslnegotiation": u.sslnegotiation,
        "sslsni": u.sslsni,
        "channel_binding": u.channel_binding,
        "require_auth": u.require_auth,
        "connect_timeout": u.connect_timeout,
        "application_name": text(u.application_name) if u.application_name else None,
        "fallback_application_name": (
            text(u.fallback_application_name) if u.fallback_application_name else None
        ),
        "options": (settings, other),
        "keepalives": keepalives,
        "target_session_attrs": u.target_session_attrs,
        "load_balance_hosts": u.load_balance_hosts,
    }


# --- the comparison --------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # agree, disagree (a listed deviation is counted apart by the test)
    detail: str = ""
    theirs: Libpq | None = None
    ours: str = ""  # our refusal message, or "accepted"
    fields: tuple[str, ...] = ()  # the meanings that differ


def _names_keyword(message: str, keywords: set[str]) -> bool:
    return any(re.search(rf"(?<![a-z_]){re.escape(k)}(?![a-z_])", message) for k in keywords)


def compare(uri: str, env: Environment) -> Outcome:
    theirs = libpq_verdict(uri, env)
    try:
        url = parse(uri)
    except ConfigError as exc:
        message = str(exc)
        if theirs.refusal is not None:
            return Outcome("agree", "both refuse", theirs, message)
        named = _names_keyword(message, set(theirs.parsed))
        if "not supported" in message and named and "unknown parameter" not in message:
            return Outcome("agree", "refused as not supported", theirs, message)
        return Outcome("disagree", f"libpq takes it; we refuse: {message}", theirs, message)
    except Exception as exc:  # noqa: BLE001 - a crash is a disagreement to report
        return Outcome("disagree", f"we crash: {exc!r}", theirs, f"crash: {exc!r}")
    if theirs.refusal is not None:
        return Outcome(
            "disagree", f"libpq refuses ({theirs.refusal}); we take it", theirs, "accepted"
        )
    expected = libpq_meaning(theirs, env)
    got = our_meaning(url, {k for k in KEEPALIVE_TIMINGS if k in theirs.info})
    fields = tuple(k for k in expected if expected[k] != got[k])
    if fields:
        diffs = "; ".join(f"{k}: libpq {expected[k]!r}, ours {got[k]!r}" for k in fields)
        return Outcome("disagree", f"different meaning: {diffs}", theirs, "accepted", fields)
    return Outcome("agree", "same meaning", theirs, "accepted")


# --- the test --------------------------------------------------------------------------------

TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def oracle() -> Iterator[Environment]:
    with environment() as env:
        yield env
    if TALLY:
        figure(
            f"libpq oracle (libpq {pq.version()}): {sum(TALLY.values())} cases, "
            f"{TALLY['agree']} agree, {TALLY['deviation']} documented deviations, "
            f"{TALLY['disagree']} disagreements"
        )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_libpq_and_ours_agree(case: Case, oracle: Environment) -> None:
    os.environ["HOME"] = oracle.homes[case.home]
    uri = oracle.render(case.uri)
    try:
        outcome = compare(uri, oracle)
    finally:
        os.environ["HOME"] = oracle.homes["empty"]
    plain = without_extensions(uri)
    if plain is not None and outcome.kind == "disagree" and outcome.ours == "accepted":
        extension = compare(plain, oracle)
        assert extension.kind == "agree", f"{plain!r} (extensions removed): {extension.detail}"
        TALLY["deviation"] += 1
        return
    deviation = DEVIATIONS.get(case.uri)
    if deviation and outcome.fields and set(outcome.fields) <= DEVIATION_FIELDS[deviation]:
        TALLY["deviation"] += 1
        return
    TALLY[outcome.kind] += 1
    assert outcome.kind == "disagree" or not deviation, f"{case.uri}: listed, but now agrees"
    assert outcome.kind == "agree", f"{uri!r} (HOME {case.home}): {outcome.detail}"


def test_the_oracle_is_libpq_18() -> None:
    """The issue was measured against libpq 18; the oracle must be that libpq."""
    assert pq.version() // 10000 == 18, pq.version()
