"""Property-based run against the live function (functions-framework, gunicorn): thousands of
generated requests, zero 500s, and every answer matches openapi.yaml."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools import seed
from tests.conftest import ROOT
from tests.report import figure

SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())
EXAMPLES = 2000


def text(size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=size)  # encodable


# Values a client, a fuzzer or an attacker would send.
nasty = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "1000",
        "1001",
        "99999999999999999999",
        "1e3",
        " 5",
        "5 ",
        "0x10",
        "١٢",
        "' OR 1=1 --",
        "1; DROP TABLE users",
        "%00",
        "\x00",
        "../../etc/passwd",
        "null",
        "[]",
        "{}",
        "🎉",
        "a" * 3000,
    ]
)
cursors = st.one_of(
    st.integers(min_value=-5, max_value=2**70).map(
        lambda n: base64.urlsafe_b64encode(f"id:{n}".encode()).decode().rstrip("=")
    ),
    text(40),
    nasty,
)
values = st.one_of(st.integers(min_value=-10, max_value=2000).map(str), text(30), nasty)
garbage = st.lists(
    st.tuples(
        st.sampled_from(["limit", "cursor", "LIMIT", "offset", "", "limit[]", "q"]),
        st.one_of(values, cursors),
    ),
    max_size=3,
)
valid = st.one_of(
    st.just([]),
    st.integers(min_value=1, max_value=1000).map(lambda n: [("limit", str(n))]),
    st.tuples(st.integers(1, 1000), st.integers(0, 40)).map(
        lambda t: [
            ("limit", str(t[0])),
            ("cursor", base64.urlsafe_b64encode(f"id:{t[1]}".encode()).decode().rstrip("=")),
        ]
    ),
)
params = st.one_of(valid, garbage)
methods = st.sampled_from(["GET"] * 6 + ["HEAD", "POST", "PUT", "PATCH", "DELETE"])
paths = st.sampled_from(["/", "/", "/users", "/x/../", "/%2e%2e/"])


def schema_for(method: str, status: int) -> dict | None:
    operation = SPEC["paths"]["/"][method.lower()]
    response = operation["responses"][str(status)]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    content = response.get("content")
    if not content:
        return None
    return {**content["application/json"]["schema"], "components": SPEC["components"]}


@pytest.fixture
def live(admin, serve):
    seed.seed_users(admin, 30, progress=False)
    served = serve()
    host, port = served.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    yield conn, served
    conn.close()


def test_generated_requests_match_the_spec(live):
    conn, served = live
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(method=methods, path=paths, query=params)
    def one(method: str, path: str, query: list[tuple[str, str]]) -> None:
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        conn.request(method, target)
        response = conn.getresponse()
        body = response.read()
        seen[response.status] = seen.get(response.status, 0) + 1
        assert response.status < 500, (target, response.status, body[:300])
        assert str(response.status) in SPEC["paths"]["/"][method.lower()]["responses"]
        if method == "HEAD":
            assert body == b""
            return
        assert response.getheader("Content-Type") == "application/json"
        schema = schema_for(method, response.status)
        jsonschema.validate(json.loads(body), schema)
        if response.status == 405:
            assert response.getheader("Allow") == "GET, HEAD"

    one()
    figure(f"fuzz: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    assert seen.get(200, 0) > 100 and seen.get(400, 0) > 100  # both sides were exercised
    assert "Traceback" not in served.log.read_text()
