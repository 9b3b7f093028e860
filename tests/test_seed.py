"""Schema and seed tooling, and the least-privilege role the function should run as."""

from __future__ import annotations

import pg8000.dbapi
import pytest

from devtools import seed


def fetch(conn: pg8000.dbapi.Connection, sql: str) -> list:
    cursor = conn.cursor()
    cursor.execute(sql)
    return [list(row) for row in cursor.fetchall()]


def test_seed_is_deterministic_and_tops_up(admin):
    assert seed.seed_users(admin, 10, progress=False) == 10
    first = fetch(admin, "SELECT id, email, name, created_at::text FROM users ORDER BY id")
    assert first[0] == [1, "user1@example.com", "José Lovelace", "2024-01-01 00:01:00+00"]
    assert seed.seed_users(admin, 10, progress=False) == 0  # idempotent
    assert seed.seed_users(admin, 12, progress=False) == 2
    assert fetch(admin, "SELECT count(*), count(DISTINCT email) FROM users") == [[12, 12]]
    assert fetch(admin, "SELECT email FROM users WHERE id = 12") == [["user12@example.com"]]


def test_seed_reports_progress_for_large_runs(admin, capsys, monkeypatch):
    monkeypatch.setattr(seed, "BATCH", 1000)
    seed.seed_users(admin, 3000)
    assert "seeded 3,000/3,000 users" in capsys.readouterr().err


@pytest.fixture
def reader(admin, postgres):
    admin.cursor().execute("ALTER TABLE users ADD COLUMN password_hash text DEFAULT 'h'")
    seed.seed_users(admin, 3, progress=False)
    seed.create_reader(admin, "reader-pw")
    conn = seed.connect(postgres.url(seed.READER_ROLE, "reader-pw"))
    yield conn
    conn.close()
    cursor = admin.cursor()
    cursor.execute(f"REVOKE ALL ON users FROM {seed.READER_ROLE}")
    cursor.execute(f"REVOKE ALL ON SCHEMA public FROM {seed.READER_ROLE}")
    cursor.execute(f"DROP ROLE {seed.READER_ROLE}")


def test_reader_role_reads_the_served_columns(reader):
    assert (
        fetch(reader, "SELECT id, email, name, created_at FROM users ORDER BY id")[0][1]
        == "user1@example.com"
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT password_hash FROM users",
        "SELECT * FROM users",
        "INSERT INTO users (email, name) VALUES ('x@example.com', 'x')",
        "UPDATE users SET name = 'x'",
        "DELETE FROM users",
        "CREATE TABLE stolen (x int)",
    ],
)
def test_reader_role_can_do_nothing_else(reader, sql):
    with pytest.raises(pg8000.dbapi.DatabaseError) as caught:
        fetch(reader, sql)
    assert caught.value.args[0]["C"] in ("42501", "25006")  # permission denied, read-only


def test_the_function_serves_users_as_the_reader_role(reader, postgres, make_app):
    client = make_app(DATABASE_URL=postgres.url(seed.READER_ROLE, "reader-pw")).test_client()
    response = client.get("/")
    assert response.status_code == 200
    assert [u["id"] for u in response.get_json()["users"]] == [1, 2, 3]


def test_seed_command_line(postgres, admin, capsys):
    assert seed.main(["--url", postgres.admin_url, "--users", "5"]) == 0
    assert fetch(admin, "SELECT count(*) FROM users") == [[5]]
    assert "5 users (5 added)" in capsys.readouterr().err
