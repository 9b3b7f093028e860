"""The `options` keyword: command-line switches for the server, split as the server splits
them (pg_split_opts), down to the settings they set. Those the function sets itself are
refused, naming the variable that sets them.
"""

from __future__ import annotations

import re

from lib.database_url.lexer import C_SPACE, invalid
from lib.errors import excerpt

# Session settings the function sets itself: a URL may not change them behind its back.
OWN_SETTINGS = {
    "statement_timeout": "DB_STATEMENT_TIMEOUT_MS",
    "idle_in_transaction_session_timeout": "DB_STATEMENT_TIMEOUT_MS",
    "idle_session_timeout": "DB_IDLE_TIMEOUT",
    "default_transaction_read_only": "nothing: the function only reads, by design",
    "transaction_read_only": "nothing: the function only reads, by design",
}
_FLAGS_WITH_ARGUMENT = set("BCcDdfhkNprStvW-")


def parse_options(raw: str) -> dict[str, str]:
    """libpq's `options`, read as the server reads it: `-c name=value` and `--name=value`
    (also inside a cluster such as `-ec name=value`) become startup parameters of their own,
    the name's '-' folded to '_' (poolers understand those); other switches and words
    (Neon's `endpoint=...`) are passed on as `options`. Settings the function owns are
    refused, naming the variable."""
    words = _split_options(raw)
    params: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        word, i = words[i], i + 1
        if not word.startswith("-") or word == "-":
            rest.append(word)
            continue
        for j in range(1, len(word)):
            flag = word[j]
            if flag not in _FLAGS_WITH_ARGUMENT:
                rest.append("-" + flag)
                continue
            argument = word[j + 1 :]
            if not argument:
                if i == len(words):
                    raise invalid(f"options: -{flag} without an argument is not supported")
                argument, i = words[i], i + 1
            if flag in "c-":
                name, value = _setting(argument)
                params[name] = value
            else:
                rest.append(f"-{flag}{argument}")
            break
    if rest:
        params["options"] = " ".join(_escape_word(word) for word in rest)
    return params


def _setting(argument: str) -> tuple[str, str]:
    """The server's ParseLongOption: `name=value`, '-' in the name read as '_'."""
    name, eq, value = argument.partition("=")
    if not eq or not name:
        raise invalid(
            f"options: '{excerpt(argument)}' is not supported: the server needs name=value"
        )
    name = name.replace("-", "_")
    if name.lower() in OWN_SETTINGS:
        raise invalid(
            f"options setting {name.lower()} is not supported: the function sets it itself: "
            f"use {OWN_SETTINGS[name.lower()]}"
        )
    return name, value


def _escape_word(word: str) -> str:
    """One word for the server's splitter: its spaces and backslashes escaped; an empty word
    is a lone backslash, which the server reads as an empty word again."""
    return re.sub(r"([\\ \t\n\v\f\r])", r"\\\1", word) or "\\"


def _split_options(raw: str) -> list[str]:
    """The server's pg_split_opts: words separated by unescaped ASCII whitespace (C's
    isspace, never NBSP); a backslash keeps the next character, space and tab included."""
    words, current, escaped, started = [], [], False, False
    for ch in raw:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = started = True
        elif ch in C_SPACE:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        words.append("".join(current))
    return words
