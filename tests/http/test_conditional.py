"""One ETag per state of the rows: the same, strong, on every 200, 304 and HEAD of it, and a
bad request refused before any statement runs. Through the real app, on a real PostgreSQL."""

from __future__ import annotations

import pytest

from devtools import seed
from lib.listing import pages
from tests.logs import request_line

CASES = {
    "one page": "/",
    "many pages": "/",  # PAGE_ROWS lowered below: one snapshot over several statements
    "a ?limit= page": "/?limit=7",
}


@pytest.fixture(params=["cache on", "cache off"])
def client(request, admin, make_app, monkeypatch):
    seed.seed_users(admin, 60, progress=False)
    env = {"RESPONSE_CACHE": "off"} if request.param == "cache off" else {}
    return make_app(**env).test_client()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_the_same_etag_on_every_200_304_and_head_of_one_state(client, monkeypatch, case, encoding):
    if case == "many pages":
        monkeypatch.setattr(pages, "PAGE_ROWS", 25)
    path, headers = CASES[case], {"Accept-Encoding": encoding}
    first = client.get(path, headers=headers)
    tag = first.headers["ETag"]
    assert first.status_code == 200 and not tag.startswith("W/")
    answers = [
        client.get(path, headers=headers),
        client.head(path, headers=headers),
        client.get(path, headers={**headers, "If-None-Match": tag}),
        client.get(path, headers={**headers, "If-None-Match": "W/" + tag}),
        client.get(path, headers={**headers, "If-None-Match": f'"other", {tag}'}),
        client.get(path, headers={**headers, "If-None-Match": "*"}),
        client.head(path, headers={**headers, "If-None-Match": tag}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 304, 304, 304, 304, 304]
    assert {a.headers["ETag"] for a in answers} == {tag}
    assert answers[0].data == first.data and answers[1].data == b""
    other = client.get(path, headers={"Accept-Encoding": "gzip" if encoding == "identity" else ""})
    if other.headers.get("Content-Encoding") != first.headers.get("Content-Encoding"):
        assert other.headers["ETag"] != tag  # another representation, another strong tag


@pytest.mark.parametrize("path", ["/?limit=5", "/"])
def test_a_bad_host_is_a_400_before_any_statement(admin, make_app, capsys, path):
    """Before, a `?limit=` page was read and only its link refused the Host; a byte-limited
    full listing refused it inside the stream, after its 200."""
    seed.seed_users(admin, 50, progress=False)
    client = make_app(RESPONSE_MAX_BYTES="2000").test_client()
    capsys.readouterr()
    response = client.get(path, headers={"Host": "bad host"})
    assert response.status_code == 400
    assert response.get_json()["error"] == {
        "code": "bad_request",
        "message": "the Host header is not a valid host name",
    }
    line = request_line(capsys.readouterr().out)
    assert (line["queries"], line["pool"]) == (0, {"started": False, "size": 5})
