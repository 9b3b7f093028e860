"""What `make bench` measures, as data: the servers, the variants served by them, the cells.

A variant is a server plus how the load asks (path, Accept-Encoding). Every cell lists the
variants it runs; what a cell leaves out is said in `LEFT_OUT` (and in BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Server:
    name: str
    source: str = ""  # functions-framework --source (empty: a Next.js app, `app`)
    target: str = ""
    path: str = "/"
    app: str = ""  # a Next.js app's directory (built with `next build`, run by `next start`)

    @property
    def node(self) -> bool:
        return bool(self.app)


@dataclass(frozen=True)
class Variant:
    name: str
    server: str
    about: str
    gzip: bool = False


SERVERS = {
    s.name: s
    for s in (
        Server("users", "main.py", "users"),
        Server("json_agg_fn", "bench/json_agg_function.py", "users"),
        Server("seed_next", path="/api/users", app="bench/seed_next"),
        Server("seed_next_app", path="/api/users", app="bench/seed_next_app"),
        Server("users_nullpool", "bench/variants.py", "users_nullpool"),
        Server("users_rows", "bench/variants.py", "users_rows"),
        Server("floor", "bench/variants.py", "floor"),
        Server("floor_select1", "bench/round_trip.py", "users"),
    )
}

VARIANTS = {
    v.name: v
    for v in (
        Variant("users", "users", "this function"),
        Variant("users_gzip", "users", "this function, asked with `Accept-Encoding: gzip`", True),
        Variant(
            "json_agg_fn",
            "json_agg_fn",
            "the held-out 20-line function: SQLAlchemy, `SELECT json_agg(u ORDER BY id)::text`, "
            "no streaming (bench/json_agg_function.py)",
        ),
        Variant(
            "seed_next",
            "seed_next",
            "the seed's own route: a Next.js 16 Pages Router API route (`pages/api/users.js`, "
            "`next build`, `next start`), node-postgres `new Pool({ max: 5, connectionString })` "
            "at module level, `pool.query('SELECT * FROM users')`, "
            "`res.status(200).json({ users: rows })` (bench/seed_next)",
        ),
        Variant("seed_next_gzip", "seed_next", "the seed's route, `Accept-Encoding: gzip`", True),
        Variant(
            "seed_next_app",
            "seed_next_app",
            "the same route as an App Router route handler (`app/api/users/route.js`, "
            "`Response.json`), same pinned versions (bench/seed_next_app): what `make bench` "
            "measured as the seed before issue #26",
        ),
        Variant("users_nullpool", "users_nullpool", "this function, a new connection a request"),
        Variant("users_rows", "users_rows", "rows -> Python dicts -> JSON"),
        Variant("floor", "floor", "a constant JSON answer: the framework alone"),
        Variant(
            "floor_select1",
            "floor_select1",
            "the framework plus one pooled round trip: SQLAlchemy/pg8000 `SELECT 1` "
            "(pool_size=5, max_overflow=0), a constant answer (bench/round_trip.py): the floor "
            "of any exact cache",
        ),
    )
}
SEED = "seed_next"

_ALL = ("users", "json_agg_fn", "seed_next", "users_nullpool", "users_rows")
_FLOORS = ("seed_next_app", "floor", "floor_select1")
# (users in the table, connections) -> variants run. Seconds per round double from 100,000.
CELLS: dict[tuple[int, int], tuple[str, ...]] = {
    (10, 8): (*_ALL, *_FLOORS),
    (1_000, 8): (*_ALL, "seed_next_app", "users_gzip", "seed_next_gzip"),
    (100_000, 1): ("users", "json_agg_fn", "seed_next", "users_gzip", "seed_next_gzip"),
    (100_000, 8): ("users", "json_agg_fn", "seed_next"),
    (1_000_000, 1): ("users",),
}
LEFT_OUT = [
    "1 and 64 connections at 10 and 1,000 users, and 64 at 100,000: they ranked the variants "
    "as 8 connections does (see git history of BENCHMARKS.md) and cost ~4 of 12 minutes.",
    "`users_rows` and `users_nullpool` from 100,000 users (16x and 1.1x slower than `users` "
    "there before; `users_rows` needs >1 GB at 8 connections); the floors past 10 users; "
    "`seed_next_app` past 1,000 users.",
    "gzip at 10 users (nothing to compress); everything but `users` at 1,000,000 users "
    "(there the point is `users`' bounded memory).",
]
