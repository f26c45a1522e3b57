"""Plugins' SQL on PostgreSQL: ``?`` placeholders and the choice of a migration step.

Plugins write one statement for both backends, with SQLite's placeholders (``?``, or
``:name`` with a mapping of parameters). psycopg takes ``%s`` and ``%(name)s``, and reads
every ``%`` as the start of one, so ``translate`` rewrites the placeholders found outside
string literals, quoted identifiers, dollar-quoted bodies and comments, and doubles every
``%`` (inside literals too: psycopg unescapes them). A ``::`` cast is left alone.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

DIALECTS: Final = ("sqlite", "postgresql")
"""The names ``store.dialect`` takes, and the keys of a migration step given per dialect."""


def step_for(step: str | Mapping[str, str], dialect: str) -> str:
    """The SQL of one migration step for ``dialect``: the step itself when it is a string
    (portable SQL), else its entry for ``dialect``; KeyError when it has none."""
    if isinstance(step, str):
        return step
    return step[dialect]


def _word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


@functools.lru_cache(maxsize=1024)
def translate(sql: str, named: bool = False) -> str:
    """``sql`` with SQLite's placeholders as psycopg's: ``?`` → ``%s`` (or, with ``named``,
    ``:name`` → ``%(name)s``) outside literals and comments, and ``%`` → ``%%``."""
    out: list[str] = []
    i = 0
    n = len(sql)
    while i < n:
        char = sql[i]
        if char == "%":
            out.append("%%")
            i += 1
        elif char == "'" or char == '"':
            # 'it''s', E'it\'s' (backslash escapes), "quoted ""identifier"""
            escapes = char == "'" and i > 0 and sql[i - 1] in "eE" and not _word_before(sql, i - 1)
            j = i + 1
            while j < n:
                if escapes and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == char:
                    if j + 1 < n and sql[j + 1] == char:
                        j += 2
                        continue
                    break
                j += 1
            out.append(sql[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif char == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif char == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif char == "$" and not (i > 0 and _word_char(sql[i - 1])):
            tag_end = i + 1
            while tag_end < n and _word_char(sql[tag_end]) and not sql[tag_end].isdigit():
                tag_end += 1
            if tag_end < n and sql[tag_end] == "$":  # $$ or $tag$: a dollar-quoted body
                tag = sql[i : tag_end + 1]
                j = sql.find(tag, tag_end + 1)
                j = n if j < 0 else j + len(tag)
                out.append(sql[i:j].replace("%", "%%"))
                i = j
            else:
                out.append(char)
                i += 1
        elif char == "?":
            out.append("%s")
            i += 1
        elif (
            named
            and char == ":"
            and i + 1 < n
            and (sql[i + 1].isalpha() or sql[i + 1] == "_")
            and not (i > 0 and sql[i - 1] == ":")
        ):
            j = i + 1
            while j < n and _word_char(sql[j]):
                j += 1
            out.append(f"%({sql[i + 1 : j]})s")
            i = j
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _word_before(sql: str, i: int) -> bool:
    """Whether the character before ``sql[i]`` is part of a word (so ``sql[i]`` is not an
    E'...' prefix but the end of a name such as ``name'``)."""
    return i > 0 and _word_char(sql[i - 1])
