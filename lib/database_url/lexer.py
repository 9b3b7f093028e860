"""libpq's URI grammar: a connection URI split into keywords and decoded values, as libpq's
conninfo_uri_parse_options reads it (https://www.postgresql.org/docs/current/libpq-connect.html,
32.1.1). No meaning yet: lib/database_url/uri.py validates what this returns.

Values are `str`; bytes that are not UTF-8 (`caf%E9`) are kept as surrogate escapes and
go on the wire as the same bytes (see `wire`), as libpq sends them.
"""

from __future__ import annotations

from lib.errors import ConfigError, excerpt

SCHEMES = ("postgresql", "postgres", "postgresql+pg8000")
C_SPACE = " \t\n\v\f\r"  # C's isspace(): what strtol and the server's option splitter skip


def invalid(problem: str) -> ConfigError:
    """An error naming DATABASE_URL (never its value: it holds the password)."""
    return ConfigError("DATABASE_URL", problem)


def wire(text: str) -> bytes:
    """The bytes libpq would send for a value of ours (surrogate escapes back to raw bytes)."""
    return text.encode("utf-8", "surrogateescape")


def uri_values(raw: str) -> dict[str, str]:
    """The URI's keywords and decoded values, as libpq's conninfo_uri_parse_options reads them.

    One deviation: an unencoded '@' in the password (`app:p@ss@host`) belongs to the password
    (as node-postgres and WHATWG URL parsers read it), where libpq would end it at the first
    '@'. An '@' after a '?' stays libpq's (a query value's).
    """
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise invalid("is not a URL of the form postgresql://user:password@host:5432/dbname")
    if scheme not in SCHEMES:
        raise invalid(
            f"scheme '{excerpt(scheme)}' is not supported: use postgresql:// or postgres://"
        )
    values: dict[str, str] = {}
    at = rest.find("@", 0, _end(rest, "/"))
    if at >= 0:
        while (later := rest.find("@", at + 1, _end(rest, "/"))) >= 0 and "?" not in rest[at:later]:
            at = later
        user, colon, password = rest[:at].partition(":")
        if user := _decode(user, "user"):
            values["user"] = user
        if colon and (password := _decode(password, "password")):
            values["password"] = password
        rest = rest[at + 1 :]
    hosts, ports, rest = _hostspecs(rest)
    if host := _decode(hosts, "host"):
        values["host"] = host
    if port := _decode(ports, "port"):
        values["port"] = port
    if rest.startswith("/"):
        path, _, query = rest[1:].partition("?")
        if dbname := _decode(path, "dbname"):
            values["dbname"] = dbname
    else:
        query = rest[1:]  # "" or after "?"
    for key, value in _query(query):
        values[key] = value  # as libpq: the query string overrides the URI's parts
    return values


def _end(text: str, stops: str, start: int = 0) -> int:
    """Index of the first character of `stops` in text[start:], or len(text)."""
    return next((i for i in range(start, len(text)) if text[i] in stops), len(text))


def _hostspecs(rest: str) -> tuple[str, str, str]:
    """`h1:5432,[::1]:5433,%2Fdir` -> ("h1,::1,%2Fdir", "5432,5433,", what follows), as
    libpq scans them: still encoded, hosts and ports joined by commas."""
    hosts, ports, i = [], [], 0
    while True:
        if rest.startswith("[", i):
            close = rest.find("]", i)
            if close < 0:
                raise invalid('has a "[" without its "]" in the host list')
            if close == i + 1:
                raise invalid("has an empty IPv6 address [] in the host list")
            hosts.append(rest[i + 1 : close])
            i = close + 1
            if i < len(rest) and rest[i] not in ":/?,":
                raise invalid(f"unexpected character {rest[i]!r} after ']' (expected ':' or '/')")
        else:
            end = _end(rest, ":/?,", i)
            hosts.append(rest[i:end])
            i = end
        port = ""
        if rest.startswith(":", i):
            end = _end(rest, "/?,", i + 1)
            port, i = rest[i + 1 : end], end
        ports.append(port)
        if not rest.startswith(",", i):
            return ",".join(hosts), ",".join(ports) if any(ports) else "", rest[i:]
        i += 1


def _query(query: str) -> list[tuple[str, str]]:
    """`k=v&...` as libpq reads it: every pair needs exactly one '=', a trailing '&' is
    fine, `ssl=true` (JDBC) means sslmode=require and requiressl is sslmode's old name."""
    pairs = []
    items = query.split("&") if query else []
    if len(items) > 1 and not items[-1]:
        items.pop()  # nothing after the last '&'
    for pair in items:
        key, eq, value = pair.partition("=")
        if not eq:
            raise invalid(f"query parameter '{excerpt(key)}' has no value (no '=')")
        if "=" in value:
            raise invalid(f"query parameter '{excerpt(key)}' has a second '='; encode it as %3D")
        key, value = _decode(key, "a query key"), _decode(value, key)
        if key == "ssl":
            if value != "true":
                raise invalid("ssl: only ssl=true is understood (as sslmode=require): use sslmode")
            key, value = "sslmode", "require"
        elif key == "requiressl":
            key, value = "sslmode", "require" if value.startswith("1") else "prefer"
        pairs.append((key, value))
    return pairs


def _decode(text: str, what: str) -> str:
    """libpq's conninfo_uri_decode: unencoded spaces at either end are trimmed and refused
    inside; %XX must be hex and never %00; bytes that are not UTF-8 stay bytes."""
    text = text.strip(" ")
    if " " in text:
        raise invalid(f"{what} has an unencoded space: write it as %20")
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] != "%":
            j = _end(text, "%", i)
            out += wire(text[i:j])
            i = j
            continue
        digits = text[i + 1 : i + 3]
        if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise invalid(f"{what} has an invalid percent-encoding: {excerpt(text[i : i + 3])!r}")
        if digits == "00":
            raise invalid(f"{what} has %00: libpq forbids a NUL byte in any value")
        out.append(int(digits, 16))
        i += 3
    return out.decode("utf-8", "surrogateescape")


def choice(v: dict[str, str], key: str, allowed: tuple[str, ...], default: str) -> str:
    """A keyword whose value is one of a fixed set."""
    value = v.get(key, default)
    if value not in allowed:
        raise invalid(f"{key} '{excerpt(value)}' is not one of {', '.join(allowed)}")
    return value
