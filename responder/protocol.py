"""The gateway's wire format: ``key=value&key=value`` lines in GBK (or another encoding).

Shared by the gateway client and the embedded simulator so both read and write the
contract in ../shared/gateway-protocol.md the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import parse_qsl, urlencode

from responder.models import PLATFORM_TZ, InboundSms, SendResult

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
NOTHING_UNREAD = "没有未读取的短信"
TOO_SOON = "读取过于频繁"
"""A read that came too soon after the previous one: no message, and the call still counted."""
TEXT_KEY = "msg"
"""The field that carries a customer's text, unescaped."""


class MalformedBody(ValueError):
    """The body is not a ``key=value&...`` line."""


def parse_body(body: str) -> dict[str, str]:
    """Parse a response line into its fields.

    Tolerates a trailing newline or spaces, keys in any order, empty values and unknown
    keys. Values are taken raw (not percent-decoded), as live servers send them, so a
    customer's text may itself contain ``&``, ``=`` or line breaks, and even something
    that looks like a field (``hi&id=0``). The text (``msg``) therefore runs from its
    key to the last field after it: fields before it are read from the left, fields
    after it from the right, and a key seen twice ends the reading on either side, so a
    text can never replace the message's id, sender or any other field. Raises
    MalformedBody when the text is not such a line.
    """
    line = body.strip().lstrip("\ufeff")
    if not line:
        raise MalformedBody("not a key=value line")
    segments = line.split("&")
    text_at = next((i for i, seg in enumerate(segments) if seg.startswith(f"{TEXT_KEY}=")), None)
    if text_at is None:
        return _fields_from_left(segments)
    head = _fields_from_left(segments[:text_at]) if text_at else {}
    tail: dict[str, str] = {}
    end = len(segments)
    while end > text_at + 1:
        pair = _pair(segments[end - 1])
        if pair is None or pair[0] in head or pair[0] in tail or pair[0] == TEXT_KEY:
            break
        tail[pair[0]] = pair[1]
        end -= 1
    text = "&".join(segments[text_at:end])[len(TEXT_KEY) + 1 :]
    return head | {TEXT_KEY: text} | dict(reversed(tail.items()))


def _pair(segment: str) -> tuple[str, str] | None:
    key, sep, value = segment.partition("=")
    return (key.strip(), value.strip()) if sep and _KEY.match(key.strip()) else None


def _fields_from_left(segments: list[str]) -> dict[str, str]:
    """Fields in order; a segment that is no new ``key=value`` belongs to the value before."""
    fields: dict[str, str] = {}
    last_key = None
    for segment in segments:
        pair = _pair(segment)
        if pair is not None and pair[0] not in fields:
            last_key, fields[pair[0]] = pair
        elif last_key is not None:
            fields[last_key] += "&" + segment
        else:
            raise MalformedBody(f"not a key=value pair: {segment[:40]!r}")
    return fields


def format_body(fields: Mapping[str, object]) -> str:
    """Write fields the way the platform does: raw values joined by ``&``."""
    return "&".join(f"{key}={'' if value is None else value}" for key, value in fields.items())


def split_numbers(value: str) -> tuple[str, ...]:
    """Numbers from a comma-separated list, without empty entries (live servers add a comma)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def parse_platform_time(value: str) -> datetime | None:
    """``YYYYMMDDHHMM`` (seconds accepted too) in platform time, or None when unusable."""
    value = value.strip()
    for fmt in ("%Y%m%d%H%M", "%Y%m%d%H%M%S"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=PLATFORM_TZ)
        except ValueError:
            continue
    return None


def format_platform_time(moment: datetime) -> str:
    return moment.astimezone(PLATFORM_TZ).strftime("%Y%m%d%H%M")


def parse_send_result(fields: Mapping[str, str], raw: str) -> SendResult:
    """Build a SendResult; a missing or unusable ``num`` counts as 0 (failed)."""
    return SendResult(
        num=max(parse_int(fields.get("num")) or 0, 0),
        accepted=split_numbers(fields.get("success", "")),
        refused=split_numbers(fields.get("faile", "")),
        errid=parse_int(fields.get("errid")),
        err=fields.get("err", ""),
        raw=raw,
    )


def parse_read_result(fields: Mapping[str, str], raw: str) -> InboundSms | None:
    """Build an InboundSms, or None for "nothing unread" (``id=0``).

    Raises MalformedBody when ``id`` is missing or not a number.
    """
    gateway_id = parse_int(fields.get("id"))
    if gateway_id is None:
        raise MalformedBody("readsms answer without a numeric id")
    if gateway_id <= 0:
        return None
    return InboundSms(
        gateway_id=gateway_id,
        src=fields.get("src", "").strip(),
        dst=fields.get("dst", "").strip(),
        text=fields.get("msg", ""),
        received_at=parse_platform_time(fields.get("time", "")),
        raw=raw,
    )


def encode_form(params: Mapping[str, str], encoding: str) -> str:
    """Percent-encode parameters in the gateway's encoding, as clients in the wild do."""
    return urlencode(params, encoding=encoding, errors="strict")


def decode_form(query: str, encoding: str) -> dict[str, str]:
    """The inverse of encode_form, used by the simulator; undecodable bytes become U+FFFD."""
    return dict(parse_qsl(query, keep_blank_values=True, encoding=encoding, errors="replace"))
