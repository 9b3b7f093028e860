"""TLS for a DATABASE_URL connection: sslmode and its companions, read with libpq's meaning,
as one `ssl.SSLContext`.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import warnings

from lib.database_url.lexer import choice, invalid
from lib.errors import excerpt

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TLS_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}


def home_file(name: str) -> str:
    """libpq's default for a TLS file: ~/.postgresql/<name>."""
    return os.path.join(os.path.expanduser("~"), ".postgresql", name)


def tls(v: dict[str, str]) -> tuple[str, ssl.SSLContext | None]:
    """sslmode (libpq's default included) and the TLS context every mode but disable uses.

    As libpq: sslrootcert=system means verify-full against the system's roots and refuses a
    weaker mode; verify-ca/verify-full need a root certificate (sslrootcert, else
    ~/.postgresql/root.crt); `require` with a root certificate that exists is verify-ca; a
    client certificate (sslcert, else ~/.postgresql/postgresql.crt) is presented whenever
    TLS is used, and ignored when its file does not exist.
    """
    rootcert = v.get("sslrootcert") or None
    default_mode = "verify-full" if rootcert == "system" else "prefer"
    sslmode = choice(v, "sslmode", (*SSLMODES, "no-verify"), default_mode)
    if sslmode == "no-verify":  # node-postgres: TLS without certificate checks
        sslmode = "require"
    if rootcert == "system" and sslmode != "verify-full":
        raise invalid(f'sslmode "{sslmode}" is too weak for sslrootcert=system (use "verify-full")')
    negotiation = choice(v, "sslnegotiation", ("postgres", "direct"), "postgres")
    if negotiation == "direct" and sslmode not in ("require", "verify-ca", "verify-full"):
        raise invalid(
            f'sslmode "{sslmode}" is too weak for sslnegotiation=direct '
            '(use "require", "verify-ca", or "verify-full")'
        )
    certmode = choice(v, "sslcertmode", ("disable", "allow", "require"), "allow")
    if certmode == "require":
        raise invalid(
            "sslcertmode=require is not supported: Python's ssl module cannot tell whether "
            "the server asked for a client certificate"
        )
    verify_full = sslmode == "verify-full"
    if not v.get("sslsni", "1").startswith("1") and verify_full:
        raise invalid(
            "sslsni=0 with verify-full is not supported: Python's ssl module checks the "
            "host name only together with sending it (SNI)"
        )
    if sslmode == "disable":
        return sslmode, None
    root = rootcert or home_file("root.crt")
    has_root = root == "system" or os.path.exists(root)
    if sslmode in ("verify-ca", "verify-full") and not has_root:
        raise invalid(
            f'sslmode={sslmode} needs the root certificate "{root}", which does not exist: '
            "give sslrootcert, use sslrootcert=system for the system's trusted roots, or "
            "choose a mode that checks no certificate"
        )
    try:
        if has_root:  # libpq checks the chain whenever a root file exists, in every mode
            ctx = ssl.create_default_context(cafile=None if root == "system" else root)
            ctx.check_hostname = verify_full
            if sslmode == "require":
                sslmode = "verify-ca"
        else:  # no certificate check: the system's trust store is not even loaded
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert = v.get("sslcert") or home_file("postgresql.crt")
        if certmode != "disable" and os.path.exists(cert):
            key = v.get("sslkey") or home_file("postgresql.key")
            ctx.load_cert_chain(cert, key, v.get("sslpassword") or None)
    except (OSError, ssl.SSLError) as exc:
        raise invalid(f"cannot load TLS files: {exc.strerror or exc}") from None
    ctx.set_alpn_protocols(["postgresql"])  # PostgreSQL 17+ requires it for direct TLS
    lowest, highest = (
        _tls_version(v, "ssl_min_protocol_version", "TLSv1.2"),  # libpq's default minimum
        _tls_version(v, "ssl_max_protocol_version", "TLSv1.3"),
    )
    if lowest > highest:
        raise invalid("ssl_min_protocol_version is above ssl_max_protocol_version")
    with warnings.catch_warnings():  # Python deprecates TLS 1.0/1.1; libpq still takes them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = lowest, highest
    if v.get("sslkeylogfile"):
        with contextlib.suppress(OSError):  # as libpq: a log it cannot open is skipped
            ctx.keylog_filename = v["sslkeylogfile"]
    return sslmode, ctx


def _tls_version(v: dict[str, str], key: str, default: str) -> ssl.TLSVersion:
    version = TLS_VERSIONS.get((v.get(key) or default).lower())
    if version is None:
        raise invalid(f"{key} '{excerpt(v[key])}' is not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3")
    return version
