"""A served table as a value: the route's envelope key, the table, its columns, its keyset.

Every name that belongs to a served table derives from its `Resource`: the envelope key
(`{"users": [...]}`), the setting that lists its columns (USERS_COLUMNS), the advice in
the errors that name that setting, the name of its prefetch thread; the statements
(lib/listing/statements.py) are built from it. Serving another table is one more Resource, one
`<NAME>_COLUMNS` line and a GRANT. The function serves one: `users` (lib/config.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A plain lower-case identifier: PostgreSQL reads it bare as it is written
# (lib/listing/statements.py writes the table and key bare, and quotes the columns).
_PLAIN = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def columns_setting(name: str) -> str:
    """The environment variable that lists a resource's columns: USERS_COLUMNS for `users`."""
    return f"{name.upper()}_COLUMNS"


@dataclass(frozen=True)
class Resource:
    """One served table. The names are the code's (or a validated setting's): plain lower-case
    identifiers, the table and key not reserved words (they are written bare in SQL)."""

    name: str  # the route's envelope key: {"users": [...]}
    table: str  # in DATABASE_URL's `schema` if it names one, else found on the search_path
    columns: tuple[str, ...]  # served, in this order, as the keys of each JSON object
    key: str = "id"  # the keyset: an integer column, unique and indexed (the primary key)

    def __post_init__(self) -> None:
        for value in (self.name, self.table, self.key, *self.columns):
            if not isinstance(value, str) or not _PLAIN.fullmatch(value):
                raise ValueError(f"{value!r} is not a plain lower-case identifier")
        if not self.columns or len(set(self.columns)) != len(self.columns):
            raise ValueError(f"{self.name}: the columns must be one or more distinct names")

    @property
    def columns_setting(self) -> str:
        """USERS_COLUMNS: named by every error about this resource's columns."""
        return columns_setting(self.name)

    @property
    def prefetch_thread(self) -> str:
        """The name of the helper thread that fetches the next page of a streamed listing."""
        return f"{self.name}-prefetch"
