"""A served table as a value: the route's envelope key, the table and its schema, its columns,
its keyset.

Every name that belongs to a served table derives from its `Resource`: the envelope key
(`{"users": [...]}`), the setting that lists its columns (USERS_COLUMNS), the advice in
the errors that name that setting; the statements (lib/listing/statements.py) are built from
it. Serving another table is one more Resource, one
`<NAME>_COLUMNS` line and a GRANT. The function serves one: `users` (lib/config.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.names import PLAIN_IDENTIFIER


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
    schema: str | None = None  # DATABASE_URL's `schema` (a plain identifier), else search_path

    def __post_init__(self) -> None:
        schema = () if self.schema is None else (self.schema,)
        for value in (self.name, self.table, self.key, *self.columns, *schema):
            if not isinstance(value, str) or not PLAIN_IDENTIFIER.fullmatch(value):
                raise ValueError(f"{value!r} is not a plain lower-case identifier")
        if not self.columns or len(set(self.columns)) != len(self.columns):
            raise ValueError(f"{self.name}: the columns must be one or more distinct names")

    @property
    def columns_setting(self) -> str:
        """USERS_COLUMNS: named by every error about this resource's columns."""
        return columns_setting(self.name)
