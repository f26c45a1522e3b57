"""The core's routes: sends (``/v1/messages``), the history and ``/v1/status``."""

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from responder import outbound
from responder.api.context import ApiContext, ApiError
from responder.api.settings import READ, SEND, ApiToken
from responder.app import App
from responder.models import PLATFORM_TZ

MAX_TO: Final = 100_000
"""The schema's bound on ``to``; ``api.max_recipients`` is the one applied."""
MAX_TEXT: Final = 10_000
MAX_CONTEXT_BYTES: Final = 8192
MAX_AHEAD: Final = timedelta(days=366)
MAX_ID: Final = 2**62
KEY_PATTERN: Final = r"^[\x21-\x7e]{1,200}$"
REPLAYED_HEADER: Final = "Idempotent-Replayed"


def iso(moment: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in platform time (+08:00)."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, PLATFORM_TZ).isoformat(timespec="seconds")


# -- models (what the OpenAPI document shows) -------------------------------------------


class SendBody(BaseModel):
    """A send: the same text to each number, through opt-out, the signature, splitting
    and the durable outbox."""

    model_config = ConfigDict(extra="forbid")

    to: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        min_length=1, max_length=MAX_TO, description="phone numbers (at most api.max_recipients)"
    )
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="the text, no signature")
    at: AwareDatetime | None = Field(
        None, description="when to send: ISO 8601 with an offset; absent or past: now"
    )
    flow: str = Field("", max_length=64, description="a conversation flow each recipient enters")
    context: dict[str, Any] = Field(
        default_factory=dict, description="attached to each recipient's conversation"
    )
    dry_run: bool = Field(False, description="check and count, store and send nothing")
    account: str | None = Field(
        None, max_length=32, description="the account to send from; default: the only one"
    )


class RecipientOut(BaseModel):
    number: str
    status: str = Field(
        description="queued, scheduled, suppressed, invalid; later also sent, refused, "
        "dead, uncertain, cancelled"
    )
    reason: str | None = None
    parts: int
    errid: int | None = None


class TotalsOut(BaseModel):
    queued: int
    suppressed: int
    invalid: int
    duplicates: int
    sms: int
    skipped: int = Field(0, description="numbers already in the send (a broadcast resumed)")


class ReceiptOut(BaseModel):
    id: int = Field(description="the send's id (0 for a dry run)")
    parts: int = Field(description="SMS parts per recipient")
    at: str | None
    totals: TotalsOut
    recipients: list[RecipientOut]


class SendStatusOut(BaseModel):
    id: int
    source: str
    text: str
    created_at: str | None
    at: str | None
    flow: str
    context: dict[str, Any]
    counts: dict[str, int]
    recipients: list[RecipientOut]


class CancelOut(BaseModel):
    id: int
    cancelled: int = Field(description="recipients cancelled now (0: nothing was left to)")


class HistoryLineOut(BaseModel):
    direction: str
    at: str | None
    number: str
    text: str
    state: str
    kind: str
    by: str
    recipients: int
    reason: str | None = None
    message_id: int | None = None
    send_id: int | None = None
    part: int
    parts: int
    errid: int | None = None
    error: str | None = None


class HistoryOut(BaseModel):
    messages: list[HistoryLineOut]
    next_cursor: str | None


# -- conversions -----------------------------------------------------------------------


def recipient_json(outcome: outbound.RecipientOutcome) -> dict[str, Any]:
    record: dict[str, Any] = {
        "number": outcome.number,
        "status": outcome.status,
        "parts": outcome.parts,
    }
    if outcome.reason:
        record["reason"] = outcome.reason
    if outcome.errid is not None:
        record["errid"] = outcome.errid
    return record


def receipt_json(receipt: outbound.SendReceipt) -> dict[str, Any]:
    return {
        "id": receipt.id,
        "parts": receipt.parts,
        "at": iso(receipt.at),
        "totals": asdict(receipt.totals),
        "recipients": [recipient_json(r) for r in receipt.recipients],
    }


def status_json(state: outbound.SendStatus) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for recipient in state.recipients:
        counts[recipient.status] = counts.get(recipient.status, 0) + 1
    return {
        "id": state.id,
        "source": state.source,
        "text": state.text,
        "created_at": iso(state.created_at),
        "at": iso(state.at),
        "flow": state.flow,
        "context": dict(state.context),
        "counts": counts,
        "recipients": [recipient_json(r) for r in state.recipients],
    }


# -- sending ---------------------------------------------------------------------------


def _submit(
    ctx: ApiContext, request: outbound.SendRequest, account_app: App | None = None
) -> outbound.SendReceipt:
    try:
        receipt: outbound.SendReceipt = ctx.run(
            lambda app: outbound.submit(account_app or app, request)
        )
    except outbound.IdempotencyConflict:
        raise ApiError(
            409,
            "conflict",
            "this Idempotency-Key was used before for a different request: "
            "use a new key for a new request",
        ) from None
    except TimeoutError:
        raise ApiError(
            503,
            "unavailable",
            "the daemon did not take the send in time: repeat it with the same "
            "Idempotency-Key (it is sent at most once)",
            {"Retry-After": "5"},
        ) from None
    except ValueError as err:  # a request outbound refuses (an unknown flow, say)
        raise ApiError(422, "invalid", str(err)) from None
    return receipt


def _key(token: ApiToken, key: str | None) -> str:
    """Idempotency keys are kept per token: two clients cannot collide."""
    return f"api:{token.name}:{key}" if key else ""


def send_as(
    ctx: ApiContext,
    token: ApiToken,
    to: list[str],
    text: str,
    *,
    key: str = "",
    account: str | None = None,
) -> dict[str, Any]:
    """A send on behalf of ``token`` from ``account`` (None: the only one; a plugin's
    route: a staff answer), answered as POST /v1/messages answers, with ``replayed``."""
    _check_text(ctx, text)
    target = ctx.account_app(account, token.accounts)
    request = outbound.SendRequest(
        to=tuple(to),
        text=text,
        key=_key(token, key),
        source=f"api:{token.name}",
        account=target.account,
    )
    receipt = _submit(ctx, request, target)
    return {**receipt_json(receipt), "replayed": receipt.replayed}


def _check_text(ctx: ApiContext, text: str) -> None:
    limit = ctx.settings.max_text
    if len(text) > limit:
        raise ApiError(
            422, "invalid", f"body.text: at most {limit} characters (api.max_text), got {len(text)}"
        )
    if not text.strip():
        raise ApiError(422, "invalid", "body.text: must not be blank")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, "invalid", "body.text: not valid Unicode text") from None


def _check_body(ctx: ApiContext, body: SendBody) -> float | None:
    settings = ctx.settings
    if len(body.to) > settings.max_recipients:
        raise ApiError(
            422,
            "invalid",
            f"body.to: at most {settings.max_recipients} numbers per request "
            f"(api.max_recipients), got {len(body.to)}: send a longer list as a broadcast",
        )
    _check_text(ctx, body.text)
    try:
        size = len(json.dumps(body.context, ensure_ascii=False).encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        raise ApiError(422, "invalid", "body.context: not JSON that can be kept") from None
    if size > MAX_CONTEXT_BYTES:
        raise ApiError(
            422, "invalid", f"body.context: at most {MAX_CONTEXT_BYTES} bytes as JSON, got {size}"
        )
    if body.at is None:
        return None
    if body.at - datetime.now(body.at.tzinfo) > MAX_AHEAD:
        raise ApiError(422, "invalid", "body.at: at most a year ahead")
    return body.at.timestamp()


# -- routes ----------------------------------------------------------------------------

Require = Callable[[str], Any]


def add_core_routes(router: APIRouter, ctx: ApiContext, require: Require) -> None:
    from responder.api.app import error_responses

    @router.post(
        "/messages",
        status_code=202,
        response_model=None,
        responses={
            202: {"model": ReceiptOut, "description": "accepted: each recipient's outcome"},
            **error_responses(404, 409, 422),
        },
        summary="Send a text to some numbers",
        tags=["messages"],
    )
    def post_message(
        body: SendBody,
        token: Annotated[ApiToken, require(SEND)],
        idempotency_key: Annotated[
            str | None,
            Header(
                pattern=KEY_PATTERN,
                description="the same key again answers the first answer and sends nothing",
            ),
        ] = None,
        account: Annotated[
            str | None,
            Query(description="the account to send from (or body.account); default: the only one"),
        ] = None,
    ) -> JSONResponse:
        at = _check_body(ctx, body)
        target = ctx.account_app(body.account or account, token.accounts)
        request = outbound.SendRequest(
            to=tuple(body.to),
            text=body.text,
            at=at,
            flow=body.flow,
            context=body.context,
            key=_key(token, idempotency_key),
            source=f"api:{token.name}",
            dry_run=body.dry_run,
            account=target.account,
        )
        receipt = _submit(ctx, request, target)
        headers = {REPLAYED_HEADER: "true"} if receipt.replayed else {}
        if receipt.id:
            headers["Location"] = f"/v1/messages/{receipt.id}"
        # A response made here skips FastAPI's encoding pass: the body is plain JSON.
        return JSONResponse(receipt_json(receipt), status_code=202, headers=headers)

    def own_send(token: ApiToken, send_id: int) -> outbound.SendStatus:
        """The send, when it is one of ``token``'s accounts; else a 404 answer."""
        state = outbound.status(ctx.current(), send_id)
        if state is None or (token.accounts is not None and state.account not in token.accounts):
            raise ApiError(404, "not_found", f"no send {send_id}")
        return state

    @router.get(
        "/messages/{send_id}",
        response_model=SendStatusOut,
        responses=error_responses(404, 422),
        summary="A send's progress, per recipient",
        tags=["messages"],
    )
    def get_message(
        send_id: Annotated[int, Path(ge=1, le=MAX_ID)],
        _token: Annotated[ApiToken, require(READ)],
    ) -> dict[str, Any]:
        return status_json(own_send(_token, send_id))

    @router.delete(
        "/messages/{send_id}",
        response_model=CancelOut,
        responses=error_responses(404, 422),
        summary="Cancel what of a send is not yet handed to the gateway",
        tags=["messages"],
    )
    def delete_message(
        send_id: Annotated[int, Path(ge=1, le=MAX_ID)],
        _token: Annotated[ApiToken, require(SEND)],
    ) -> dict[str, Any]:
        if _token.accounts is not None:  # only a send of its own accounts
            own_send(_token, send_id)
        try:
            cancelled = ctx.run(lambda app: outbound.cancel(app, send_id))
        except TimeoutError:
            raise ApiError(
                503, "unavailable", "the daemon is busy: try again", {"Retry-After": "5"}
            ) from None
        if cancelled is None:
            raise ApiError(404, "not_found", f"no send {send_id}")
        return {"id": send_id, "cancelled": cancelled}

    @router.get(
        "/messages",
        response_model=HistoryOut,
        responses=error_responses(404, 422),
        summary="The history: SMS in and out, newest first, paged",
        tags=["messages"],
    )
    def list_messages(
        _token: Annotated[ApiToken, require(READ)],
        direction: Annotated[str | None, Query(pattern="^(in|out)$")] = None,
        number: Annotated[str | None, Query(max_length=40)] = None,
        since: Annotated[
            str | None,
            Query(max_length=40, description="a date or ISO 8601 time (platform time)"),
        ] = None,
        q: Annotated[str | None, Query(max_length=200, description="text containing")] = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        account: Annotated[
            str | None,
            Query(max_length=32, description="the account's history; default: the only one"),
        ] = None,
    ) -> dict[str, Any]:
        from responder.history import history, parse_moment

        target = ctx.account_app(account, _token.accounts)
        try:
            page = history(
                target,
                account=target.account,
                number=number,
                since=parse_moment(since) if since else None,
                grep=q,
                direction=direction,
                cursor=cursor,
                limit=limit,
            )
        except ValueError as err:
            raise ApiError(422, "invalid", str(err)) from None
        return {
            "messages": [
                {
                    "direction": line.direction,
                    "at": iso(line.at),
                    "number": line.number,
                    "text": line.text,
                    "state": line.state,
                    "kind": line.kind,
                    "by": line.by,
                    "recipients": line.recipients,
                    "reason": line.reason or None,
                    "message_id": line.message_id,
                    "send_id": line.send_id,
                    "part": line.part,
                    "parts": line.parts,
                    "errid": line.errid,
                    "error": line.error or None,
                }
                for line in page.lines
            ],
            "next_cursor": page.next_cursor,
        }

    @router.get(
        "/status",
        response_model=dict[str, Any],
        responses=error_responses(404),
        summary="The account's state, balance, queue depths and the plugins' figures",
        tags=["status"],
    )
    def get_status(
        _token: Annotated[ApiToken, require(READ)],
        account: Annotated[
            str | None,
            Query(max_length=32, description="one account's status; default: every one"),
        ] = None,
    ) -> dict[str, Any]:
        if account is not None:
            return status_record(ctx.account_app(account, _token.accounts))
        if ctx.accounts is None or len(ctx.accounts()) <= 1:  # one account: as ever
            return status_record(ctx.account_app(None, _token.accounts))
        return accounts_status(ctx, _token)


STALE_AFTER: Final = 300.0
"""Seconds without a good read after which the status says unhealthy (as ``responder
status``'s default ``--max-age``)."""


def status_record(app: App, *, max_age: float = STALE_AFTER) -> dict[str, Any]:
    from responder.cli import status_record as record

    return record(app, max_age=max_age, now=time.time())


PER_ACCOUNT: Final = ("account", "plugins", "healthy")
"""The keys of a status record that belong to its account; the others (the store's
figures, queue depths, sends) are the process's."""


def accounts_status(ctx: ApiContext, token: ApiToken) -> dict[str, Any]:
    """Several accounts: the process-wide figures (for a token not limited to accounts:
    they span every one), ``accounts`` (each account ``token`` may see: its state,
    plugins' figures and health) and ``healthy`` (all of those)."""
    names = ctx.visible(token.accounts)
    records: dict[str, dict[str, Any]] = {}
    for name in names:
        app = ctx.app_for(name) if ctx.app_for is not None else None
        if app is not None:
            records[name] = status_record(app)
    whole: dict[str, Any] = {}
    if token.accounts is None:  # the process's figures span every account
        base = status_record(ctx.current())
        whole = {key: value for key, value in base.items() if key not in PER_ACCOUNT}
    return whole | {
        "accounts": {
            name: {key: record[key] for key in PER_ACCOUNT} for name, record in records.items()
        },
        "healthy": all(record["healthy"] for record in records.values()),
    }
