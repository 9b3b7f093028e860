"""The Cloud SQL Admin API calls of a steady load, with one instance name and with several.

A Cloud SQL ephemeral certificate lives an hour. With lazy refresh the connector refreshes
when a new connection starts within 4 minutes (its buffer) of the expiry; each refresh is one
`connectSettings` and one `generateEphemeralCert` (client.py asks for both every time, which
is where the "extra" connectSettings after a backend kill comes from: the connection opened
after the kill refreshed a certificate inside that window, and the refresh fetched the
instance's settings along with the certificate). The function makes no Admin API call of its
own. So, per instance that serves connections, a certificate lasts 56 minutes of use:
2 x 60/56 = 2.14 calls an instance-hour, and none for an instance no connection goes to.

Time is compressed: certificates of buffer + 1 s are usable for 1 s, and every request opens
a new connection (DB_IDLE_TIMEOUT of 1 ms), so each second of load stands for 56 minutes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.google_fake import GoogleFake
from tests.report import figure
from tests.test_connect_url import replicas  # noqa: F401 - the primary and its standby

USABLE_S = 1.0  # each certificate's life before the refresh buffer
LOAD_S = 4.0
HOUR_OF_USE = 60 / 56  # certificates an hour: each is used 56 of its 60 minutes


@pytest.fixture
def google(replicas, tmp_path) -> Iterator[GoogleFake]:  # noqa: F811
    from google.cloud.sql.connector.refresh_utils import _refresh_buffer

    primary, standby = replicas
    fake = GoogleFake(tmp_path, ("127.0.0.1", primary.port), instance="my-proj:us-central1:main")
    fake.add_instance("my-proj:us-central1:replica-a", ("127.0.0.1", standby.port))
    fake.add_instance("my-proj:us-central1:replica-b", ("127.0.0.1", standby.port))
    fake.api.cert_lifetime_s = _refresh_buffer + USABLE_S
    yield fake
    fake.close()


def steady_load(replicas, make_app, google: GoogleFake, names: str) -> float:  # noqa: F811
    """New connections every ~50 ms for LOAD_S seconds: how long it ran."""
    url = make_url(replicas[0].url())
    env = google.env(
        INSTANCE_CONNECTION_NAME=names,
        DB_USER=url.username,
        DB_PASS=url.password,
        DB_NAME=url.database,
        DB_IDLE_TIMEOUT="0.001",
    )
    client = make_app(**env).test_client()
    started = time.monotonic()
    while time.monotonic() - started < LOAD_S:
        assert client.get("/?limit=1").status_code == 200
        time.sleep(0.05)
    return time.monotonic() - started


def per_instance_hour(certs: int, seconds: float) -> float:
    """Admin API calls an instance-hour in steady state, from `certs` refreshes (two calls
    each) in `seconds` of compressed time; the first, at the start, is not steady state."""
    return 2 * (certs - 1) / (seconds / USABLE_S) * HOUR_OF_USE


@pytest.mark.slow
def test_one_instance_costs_two_calls_per_certificate(replicas, make_app, google):  # noqa: F811
    seconds = steady_load(replicas, make_app, google, "my-proj:us-central1:main")
    calls = google.api.calls_by_instance
    settings, certs = calls["main", "connectSettings"], calls["main", "generateEphemeralCert"]
    assert settings == certs  # one of each per refresh: none of ours, none unpaired
    # At most one refresh per usable second, after the first; and refreshes do happen.
    assert 3 <= certs <= seconds / USABLE_S + 1
    rate = per_instance_hour(certs, seconds)
    assert rate <= 2 * HOUR_OF_USE + 0.01
    figure(f"Admin API, one instance: {rate:.2f} calls per instance-hour (2 x 60/56 = 2.14)")


@pytest.mark.slow
def test_several_instances_cost_the_same_per_instance_used(replicas, make_app, google):  # noqa: F811
    """prefer-standby: the two replicas serve and each costs what one instance does; the
    primary is dialled at most once (to learn it is the primary) and then never refreshed."""
    names = "my-proj:us-central1:main,my-proj:us-central1:replica-a,my-proj:us-central1:replica-b"
    seconds = steady_load(replicas, make_app, google, names)
    calls = google.api.calls_by_instance
    rates = []
    for name in ("replica-a", "replica-b"):
        settings, certs = calls[name, "connectSettings"], calls[name, "generateEphemeralCert"]
        assert settings == certs
        assert 1 <= certs <= seconds / USABLE_S + 1  # fewer if it served no new connection
        rates.append(per_instance_hour(certs, seconds))
    assert calls["main", "connectSettings"] <= 1
    figure(
        "Admin API, primary + 2 replicas (prefer-standby): "
        + ", ".join(f"{rate:.2f}" for rate in rates)
        + f" calls per replica-hour; the primary {calls['main', 'connectSettings'] * 2} in all"
    )
