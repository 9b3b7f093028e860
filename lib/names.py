"""The syntax of the names the function reads from its settings and its requests, each rule
in one place: plain SQL identifiers and DNS labels."""

from __future__ import annotations

import re

# A plain lower-case identifier: PostgreSQL reads it bare as it is written, and folds
# nothing (lib/listing/statements.py writes the table and key bare, and quotes the columns).
PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# One DNS label (RFC 1123), any case: host names are compared without it.
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
