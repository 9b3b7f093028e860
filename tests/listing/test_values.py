"""The core's pure parts as tables: encodings, ETags and their matching, the spool, the next
link. No server, no database."""

from __future__ import annotations

import gzip
import io

import pytest

from lib.listing import compression, etags, spool
from lib.listing.compression import Gzip, negotiate
from lib.listing.paging import MAX_ID, PageRequest, decode_cursor, encode_cursor, next_url
from lib.listing.query import Shape
from lib.listing.spool import Spool
from lib.listing.validator import Identity
from lib.resource import Resource


@pytest.mark.parametrize(
    ("accept", "gzip_"),
    [
        (None, Gzip.NO),
        ("", Gzip.NO),
        ("gzip", Gzip.IF_WORTH),
        ("GZIP;q=0.5, br", Gzip.IF_WORTH),
        ("x-gzip", Gzip.IF_WORTH),
        ("*", Gzip.IF_WORTH),
        ("gzip;q=0", Gzip.NO),
        ("identity;q=1, gzip;q=0.5", Gzip.NO),
        ("gzip, identity;q=0", Gzip.ONLY),
        ("gzip, *;q=0", Gzip.ONLY),
        ("br, deflate", Gzip.NO),
        ("gzip;q=2", Gzip.NO),  # not a qvalue: ignored, so nothing names gzip
        ("gzip;q=0.001", Gzip.IF_WORTH),
    ],
)
def test_what_accept_encoding_allows(accept, gzip_):
    assert negotiate(accept) is gzip_


@pytest.mark.parametrize(
    ("choice", "size", "applies"),
    [
        (Gzip.NO, 10**6, False),
        (Gzip.IF_WORTH, compression.MIN_BYTES - 1, False),
        (Gzip.IF_WORTH, compression.MIN_BYTES, True),
        (Gzip.ONLY, 1, True),
    ],
)
def test_when_gzip_applies(choice, size, applies):
    assert choice.applies(size) is applies


def test_a_file_compresses_to_the_same_bytes_as_the_whole():
    body = b'{"id":1,"name":"x"},' * 50_000  # several CHUNKs
    out = io.BytesIO()
    compression.compress_file(io.BytesIO(body), out.write)
    assert out.getvalue() == compression.compress(body)
    assert gzip.decompress(out.getvalue()) == body


SHAPE = Shape(Resource("users", "users", ("id",)), PageRequest(), Gzip.NO, "http://h", "/", None)
SERVER = Identity("7301", "2026-12-07 10:00:00+00")


def test_an_etag_changes_with_each_thing_the_bytes_depend_on():
    tag = etags.of_state(SERVER, "t1", SHAPE)
    assert tag.startswith('"') and tag.endswith('"') and not tag.startswith("W/")
    assert tag == etags.of_state(Identity("7301", "2026-12-07 10:00:00+00"), "t1", SHAPE)
    others = {
        etags.of_state(SERVER, "t2", SHAPE),
        etags.of_state(Identity("7302", SERVER.started), "t1", SHAPE),
        etags.of_state(Identity(SERVER.system_id, "2026-12-08"), "t1", SHAPE),
        *(
            etags.of_state(SERVER, "t1", Shape(**{**SHAPE.__dict__, field: value}))
            for field, value in (
                ("gzip", Gzip.IF_WORTH),
                ("origin", "https://h"),
                ("path", "/x"),
                ("max_bytes", 10),
                ("page", PageRequest(limit=5)),
            )
        ),
    }
    assert tag not in others and len(others) == 8


@pytest.mark.parametrize(
    ("held", "matches"),
    [
        (set(), False),
        ({"abc"}, True),
        ({"abd"}, False),
        ({"x", "abc"}, True),
        ({"*"}, True),
    ],
)
def test_if_none_match_uses_the_weak_comparison(held, matches):
    assert etags.matches(frozenset(held), '"abc"') is matches
    assert etags.matches(frozenset(held), 'W/"abc"') is matches


def test_a_spool_keeps_small_bodies_in_memory_and_large_ones_in_a_file():
    small = Spool()
    small.write(b"{")
    small.write(b"x" * 10)
    assert small.read() == b"{" + b"x" * 10 and small.size == 11
    assert not small._file._rolled
    large = Spool()
    large.write(b'{"users":[')  # as a listing starts: the head first, then the pages
    piece = b"y" * 4096
    for _ in range(spool.MEMORY_BYTES // len(piece) + 1):
        large.write(piece)
    assert large._file._rolled
    assert b"".join(large.slices(1000)) == large.read() and large.size == len(large.read())
    whole = Spool()
    whole.write(large.read())
    assert whole.digest() == large.digest()
    assert gzip.decompress(large.gzipped().read()) == large.read()
    held = Spool.of(b"cached body")
    assert (held.read(), held.size) == (b"cached body", 11)
    large.close()


def test_a_large_listing_is_spooled_to_a_file(admin, make_app, monkeypatch):
    """The listing's body leaves memory past MEMORY_BYTES (it starts with its head)."""
    from devtools import seed
    from lib.listing import pages

    seed.seed_users(admin, 12_000, progress=False)  # ~1.3 MB of JSON
    rolled = []
    write = Spool.write

    def watched(self, data):
        write(self, data)
        rolled.append(self._file._rolled)

    monkeypatch.setattr(Spool, "write", watched)
    body = make_app(RESPONSE_CACHE="off").test_client().get("/").data
    assert len(body) > spool.MEMORY_BYTES and rolled[-1] is True
    assert pages.PAGE_ROWS < 12_000  # several pages, one spool


@pytest.mark.parametrize("last_id", [1, 99, MAX_ID])
def test_the_next_link_carries_a_cursor_of_ours(last_id):
    url = next_url("https://api.example", "/", 1000, last_id)
    assert url.startswith("https://api.example/?limit=1000&cursor=")
    assert decode_cursor(url.rsplit("=", 1)[1]) == last_id == decode_cursor(encode_cursor(last_id))
