"""Reply templates: ``{name}`` placeholders filled by plain substitution."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Final

from responder import Message

FIELDS: Final = ("src", "dst", "text", "args", "time")
"""Placeholders every reply template may use."""

_FORMAT = string.Formatter()


@dataclass(frozen=True)
class Template:
    """A reply with ``{name}`` placeholders, filled by plain substitution (never re-parsed)."""

    source: str
    pieces: tuple[tuple[str, str], ...]
    """(literal text, placeholder name or "") pairs."""
    names: frozenset[str] = frozenset()

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(literal + (values[name] if name else "") for literal, name in self.pieces)


def parse_template(source: str) -> Template:
    """Split a template into pieces; raise ValueError on a brace that is not a placeholder.

    The syntax is str.format's, but only plain names are allowed: no attributes, indexes,
    conversions or format specs. ``{{`` and ``}}`` are literal braces.
    """
    if "{" not in source and "}" not in source:
        return Template(source=source, pieces=((source, ""),))
    pieces: list[tuple[str, str]] = []
    literal = ""
    try:
        parsed = list(_FORMAT.parse(source))
    except ValueError as err:
        if "Single '}'" in str(err):
            raise ValueError("unbalanced '}': write '}}' for a literal brace") from None
        if "Single '{'" in str(err) or "expected '}'" in str(err):
            raise ValueError("unbalanced '{': write '{{' for a literal brace") from None
        raise ValueError(f"a brace that is not a placeholder ({err})") from None
    for text, name, spec, conversion in parsed:
        literal += text
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion is not None:
            written = "{" + name + (f"!{conversion}" if conversion else "")
            written += (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"{written!r} is not a placeholder: use a name such as {{src}}, "
                "or write {{ and }} for literal braces"
            )
        pieces.append((literal, name))
        literal = ""
    pieces.append((literal, ""))
    names = frozenset(name for _literal, name in pieces if name)
    return Template(source=source, pieces=tuple(pieces), names=names)


def values_for(message: Message, moment: float, timezone: tzinfo, args: str) -> dict[str, str]:
    """The standard placeholders' values for a message."""
    return {
        "src": message.src,
        "dst": message.dst,
        "text": message.text.strip(),
        "args": args,
        "time": datetime.fromtimestamp(moment, timezone).strftime("%Y-%m-%d %H:%M"),
    }
